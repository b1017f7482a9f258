"""`kdrun distill`: the recipe of one distillation run, top to bottom."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from kdrun.commands.common import EpochHook, Setup, log, model_cost, plain_config, run_header, setup, stop_hook, train_student
from kdrun.engine import predict
from kdrun.knowledge import gradient_probe, probe_subset, teacher_stats
from kdrun.losses import build_loss
from kdrun.rundir import write_summary
from kdrun.teacher import obtain_teacher
from kdrun.ui import epoch_progress, show_results


def epoch_hooks(cfg: DictConfig, env: Setup, teacher_logits: torch.Tensor,
                reference: tuple[torch.Tensor, torch.Tensor]) -> Callable[[torch.nn.Module], list[EpochHook]]:
    """Per-epoch extras for the student: the gradient-rescaling probe (cfg.probe) on the reference inputs."""

    def hooks(student: torch.nn.Module) -> list[EpochHook]:
        if not cfg.probe:
            return []
        x, y = reference
        index = probe_subset(len(x), cfg.probe_examples).to(env.device)
        return [gradient_probe(student, teacher_logits[index], x[index], y[index], cfg.T)]

    return hooks


def run(cfg: DictConfig, run_dir: Path) -> float:
    env = setup(cfg)
    with epoch_progress(cfg.progress, "teacher") as progress:
        teacher = obtain_teacher(cfg.teacher, cfg.dataset, env.data, env.device, plain_config(cfg), progress,
                                 epoch=cfg.teacher_epoch, fit_hooks=stop_hook())
    reference = env.data.teacher_reference(env.device)  # un-augmented training inputs: stats and probe
    teacher_logits = predict(teacher.model, reference[0])
    stats = teacher_stats(teacher_logits, reference[1], cfg.T, env.data.num_classes)
    loss = build_loss(cfg, stats)
    if cfg.loss.name == "ls":
        log.info("ls: epsilon %.4f (%s)", loss.epsilon, "the teacher's mean non-target mass at T=%g" % cfg.T
                 if cfg.loss.epsilon is None else "loss.epsilon")
    student, result = train_student(cfg, env, run_dir, teacher.model, loss=loss,
                                    epoch_hooks=epoch_hooks(cfg, env, teacher_logits, reference))
    student_cost = model_cost(student, env.data, cfg, env.device)
    teacher_cost = model_cost(teacher.model, env.data, cfg, env.device)
    speedup = teacher_cost["latency"]["batch1_ms_median"] / student_cost["latency"]["batch1_ms_median"]
    summary = {**run_header(cfg, run_dir), "model": cfg.student.name, "T": cfg.T, "alpha": cfg.alpha,
               "loss": cfg.loss.name, **({"epsilon": loss.epsilon} if cfg.loss.name == "ls" else {}),
               "label_noise": cfg.dataset.label_noise, **result, **student_cost,
               "teacher": {"model": cfg.teacher.name, "test_acc": teacher.test_acc, **teacher_cost,
                           "checkpoint": str(teacher.checkpoint), "checkpoint_format": teacher.source.get("format"),
                           "checkpoint_sha256": teacher.source.get("sha256"), "weights": cfg.teacher.weights,
                           "epoch": cfg.teacher_epoch,
                           "label_smoothing": cfg.teacher.train.label_smoothing,
                           "train_nontarget_mass_at_T": stats.epsilon},
               "speedup": speedup}
    write_summary(run_dir, summary)
    show_results([{"role": "teacher", "model": cfg.teacher.name, **summary["teacher"]},
                  {"role": f"student loss={cfg.loss.name} T={cfg.T:g} alpha={cfg.alpha:g}", "model": cfg.student.name,
                   **summary}],
                 title="kdrun distill", notes=[f"batch-1 speedup over the teacher: {speedup:.1f}x",
                                               f"teacher checkpoint: {teacher.checkpoint}", f"run dir: {run_dir}"])
    return summary["test_acc"]
