"""`kdrun train-student`: the student on hard labels alone, the baseline every distill run needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from kdrun.commands.common import Setup, run_header, setup, student_cost, train_student
from kdrun.run.rundir import write_summary
from kdrun.core.console import show_results


def run(cfg: DictConfig, run_dir: Path) -> float:
    env = setup(cfg)
    student, result = train_student(cfg, env, run_dir)
    return finish(cfg, env, run_dir, student, result)


def finish(cfg: DictConfig, env: Setup, run_dir: Path, student: torch.nn.Module, result: dict[str, Any]) -> float:
    """summary.json (written last) and the results table for a trained student."""
    summary = {**run_header(cfg, run_dir), "model": cfg.student.name, **result, **student_cost(cfg, student, env)}
    write_summary(run_dir, summary)
    show_results([{"role": "student (hard labels)", "model": cfg.student.name, **summary}],
                 title="kdrun train-student", notes=[f"run dir: {run_dir}"])
    return summary["test_acc"]
