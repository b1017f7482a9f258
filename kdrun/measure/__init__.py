"""What a model costs at inference: latency and throughput measured by each run (never reused), parameters
and FLOPs."""
