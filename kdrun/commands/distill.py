"""`kdrun distill`: the recipe of one distillation run, top to bottom."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdrun.commands.common import (epoch_recorder, history_summary, model_cost, plain_config, run_header, setup)
from kdrun.engine import fit
from kdrun.losses import KDLoss
from kdrun.models import build_model
from kdrun.runio import save_checkpoint, write_summary
from kdrun.runtime import seed_everything
from kdrun.teacher import obtain_teacher, recipe_from_optim
from kdrun.ui import epoch_progress, show_results


def run(cfg: DictConfig, run_dir: Path) -> None:
    env = setup(cfg)
    data = env.data
    with epoch_progress(cfg.progress, "teacher") as progress:
        teacher = obtain_teacher(cfg.teacher, cfg.dataset, data, env.device, plain_config(cfg), progress)
    seed_everything(cfg.seed)
    student = build_model(cfg.student.name, data.num_classes, data.input_shape, cfg.student.kwargs).to(env.device)
    with epoch_progress(cfg.progress, "student") as progress:
        history = fit(student, data, recipe_from_optim(cfg.optim, cfg.epochs, cfg.seed), env.device,
                      teacher=teacher.model, kd_loss=KDLoss(cfg.T, cfg.alpha),
                      on_epoch=epoch_recorder(run_dir, "student"), progress=progress)
    result = history_summary(history)
    save_checkpoint(run_dir / "checkpoint.pt", student, arch=cfg.student.name,
                    arch_kwargs=OmegaConf.to_container(cfg.student.kwargs), num_classes=data.num_classes,
                    input_shape=data.input_shape, dataset=data.name, config=plain_config(cfg),
                    metrics={**result, "history": history})
    student_cost, teacher_cost = model_cost(student, data, cfg, env.device), model_cost(teacher.model, data, cfg, env.device)
    speedup = teacher_cost["latency"]["batch1_ms_median"] / student_cost["latency"]["batch1_ms_median"]
    summary = {**run_header(cfg, run_dir), "model": cfg.student.name, "T": cfg.T, "alpha": cfg.alpha, **result,
               **student_cost, "checkpoint": str(run_dir / "checkpoint.pt"),
               "teacher": {"model": cfg.teacher.name, "test_acc": teacher.test_acc, **teacher_cost,
                           "checkpoint": str(teacher.checkpoint)},
               "speedup": speedup}
    write_summary(run_dir, summary)
    show_results([{"role": "teacher", "model": cfg.teacher.name, **summary["teacher"]},
                  {"role": f"student T={cfg.T:g} alpha={cfg.alpha:g}", "model": cfg.student.name, **summary}],
                 title="kdrun distill", notes=[f"batch-1 speedup over the teacher: {speedup:.1f}x",
                                               f"teacher checkpoint: {teacher.checkpoint}", f"run dir: {run_dir}"])
