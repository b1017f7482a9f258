"""kdrun's SLURM launcher: `hydra/launcher=slurm` is Hydra's submitit launcher with kdrun's handling of a cluster."""
