"""`kdrun train-student`: the student on hard labels alone, the baseline every distill run needs."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from kdrun.commands.common import model_cost, run_header, setup, train_student
from kdrun.rundir import write_summary
from kdrun.ui import show_results


def run(cfg: DictConfig, run_dir: Path) -> float:
    env = setup(cfg)
    student, result = train_student(cfg, env, run_dir)
    summary = {**run_header(cfg, run_dir), "model": cfg.student.name, **result,
               **model_cost(student, env.data, cfg, env.device)}
    write_summary(run_dir, summary)
    show_results([{"role": "student (hard labels)", "model": cfg.student.name, **summary}],
                 title="kdrun train-student", notes=[f"run dir: {run_dir}"])
    return summary["test_acc"]
