"""`torchrun --nproc_per_node=N -m kdrun <command> ...`: one run, one run directory, on every rank.

Rank 0 composes the overrides and picks the run dir; every rank joins the process group and gets
rank 0's directory, and only rank 0 lets Hydra write its `.hydra/` files there (kdrun.core.files.writes).
"""

from __future__ import annotations

from kdrun.core.distributed import enter_job, from_main
from kdrun.core.errors import KdrunError
from kdrun.run.outdir import resolve_output


def torchrun_overrides(name: str, config_name: str, rest: list[str], multirun: bool) -> list[str]:
    """One run on all ranks: refuse what cannot be shared, then give every rank rank 0's run directory."""
    if multirun:
        raise KdrunError("torchrun runs one job on several processes; drop -m (a sweep of multi-process jobs: "
                         "hydra/launcher=slurm with hydra.launcher.tasks_per_node=N)")
    if config_name == "inspect_teacher":
        raise KdrunError(f"{name} runs on one process; start it without torchrun")
    return shared_overrides(config_name, rest)


def shared_overrides(config_name: str, overrides: list[str]) -> list[str]:
    """Hydra overrides that give every rank of a torchrun job rank 0's run directory, and keep Hydra on the
    other ranks from writing its .hydra/ files there."""
    ctx = enter_job()
    run_dir = from_main(str(resolve_output(config_name, overrides, multirun=False).path) if ctx.is_main else None)
    return [*overrides, f"hydra.run.dir='{run_dir}'", *([] if ctx.is_main else ["hydra.output_subdir=null"])]
