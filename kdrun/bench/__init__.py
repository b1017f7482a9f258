"""`make bench` (`python -m kdrun.bench`): per-epoch costs and a sweep, measured side by side."""
