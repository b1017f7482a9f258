"""`kdrun distill`: the recipe of one distillation run, top to bottom."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from kdrun.commands.common import model_cost, plain_config, run_header, setup, stop_hook, train_student
from kdrun.losses import KDLoss
from kdrun.runio import write_summary
from kdrun.teacher import obtain_teacher
from kdrun.ui import epoch_progress, show_results


def run(cfg: DictConfig, run_dir: Path) -> float:
    env = setup(cfg)
    with epoch_progress(cfg.progress, "teacher") as progress:
        teacher = obtain_teacher(cfg.teacher, cfg.dataset, env.data, env.device, plain_config(cfg), progress,
                                 fit_hooks=stop_hook())
    student, result = train_student(cfg, env, run_dir, teacher.model, loss=KDLoss(cfg.T, cfg.alpha))
    student_cost = model_cost(student, env.data, cfg, env.device)
    teacher_cost = model_cost(teacher.model, env.data, cfg, env.device)
    speedup = teacher_cost["latency"]["batch1_ms_median"] / student_cost["latency"]["batch1_ms_median"]
    summary = {**run_header(cfg, run_dir), "model": cfg.student.name, "T": cfg.T, "alpha": cfg.alpha, **result,
               **student_cost,
               "teacher": {"model": cfg.teacher.name, "test_acc": teacher.test_acc, **teacher_cost,
                           "checkpoint": str(teacher.checkpoint)},
               "speedup": speedup}
    write_summary(run_dir, summary)
    show_results([{"role": "teacher", "model": cfg.teacher.name, **summary["teacher"]},
                  {"role": f"student T={cfg.T:g} alpha={cfg.alpha:g}", "model": cfg.student.name, **summary}],
                 title="kdrun distill", notes=[f"batch-1 speedup over the teacher: {speedup:.1f}x",
                                               f"teacher checkpoint: {teacher.checkpoint}", f"run dir: {run_dir}"])
    return summary["test_acc"]
