"""Which launcher started this process as one of several, read from the environment (no torch here).

torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a SLURM step of several tasks (Hydra's submitit launcher
with `tasks_per_node` or `nodes` > 1) sets SLURM_NTASKS/SLURM_PROCID/SLURM_LOCALID instead.
"""

from __future__ import annotations

import os
from typing import Mapping


def under_torchrun(environ: Mapping[str, str] = os.environ) -> bool:
    return int(environ.get("WORLD_SIZE", "1")) > 1


def in_slurm_tasks(environ: Mapping[str, str] = os.environ) -> bool:
    return "SLURM_PROCID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1


def launched(environ: Mapping[str, str] = os.environ) -> bool:
    """True when this process is one rank of a job of several."""
    return under_torchrun(environ) or in_slurm_tasks(environ)
