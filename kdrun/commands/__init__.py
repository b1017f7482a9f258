"""One module per command, each exposing `run(cfg, run_dir) -> float`; `kdrun.run.task` calls them."""
