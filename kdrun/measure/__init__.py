"""What a model costs at inference: latency, throughput, parameters and FLOPs, measured once and shared."""
