"""`kdrun train-student`: the student on hard labels alone, the baseline every distill run needs.

`train_student` is the student's recipe for distill too (it passes a teacher and its loss).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from kdrun.commands.export import deploy_notes, export_block
from kdrun.commands.record import (
    EpochHook,
    chain,
    epoch_recorder,
    history_summary,
    model_cost,
    plain_config,
    run_header,
)
from kdrun.commands.resumable import extension, training_hooks
from kdrun.commands.setup import Setup, build_student, log, setup
from kdrun.core.console import epoch_progress, show_results
from kdrun.data.base import TensorData
from kdrun.deploy import fake_quant
from kdrun.methods.base import Method, as_method
from kdrun.methods.losses import cross_entropy
from kdrun.models.checkpoint import save_checkpoint
from kdrun.models.registry import model_kwargs
from kdrun.models.views import view_of
from kdrun.run.rundir import CHECKPOINT, objective, write_summary
from kdrun.train.engine import fit
from kdrun.train.recipe import recipe_from_optim


def run(cfg: DictConfig, run_dir: Path) -> float:
    env = setup(cfg)
    student, result = train_student(cfg, env, run_dir)
    return finish(cfg, env, run_dir, student, result)


def finish(cfg: DictConfig, env: Setup, run_dir: Path, student: torch.nn.Module, result: dict[str, Any],
           cost: dict[str, Any] | None = None) -> float:
    """summary.json (written last) and the results table for a trained student. `cost`: measured for a whole
    stacked group; else the student is measured now."""
    cost = cost or model_cost(student, env.data, cfg, env.device)
    summary = {**run_header(cfg, run_dir, env), "model": cfg.student.name,
               "view": view_of(student).describe(env.data.input_shape), **result, **cost}
    if exports(cfg):
        summary["deploy"] = export_block(cfg, run_dir, env.data, student)
    write_summary(run_dir, summary)
    show_results([{"role": "student (hard labels)", "model": cfg.student.name, **summary}],
                 title="kdrun train-student", notes=[*deploy_notes(summary), f"run dir: {run_dir}"])
    return objective(summary)


def save_student(cfg: DictConfig, run_dir: Path, student: torch.nn.Module, data: TensorData,
                 history: list[dict[str, float]], method: Method | None = None) -> dict[str, Any]:
    """checkpoint.pt for the trained student (with the method's trained parts, if any); its summary
    fields (accuracy, train time, checkpoint path)."""
    result = history_summary(history)
    method_state = {} if method is None else {k: v.detach().cpu() for k, v in method.state_dict().items()}
    save_checkpoint(run_dir / CHECKPOINT, student, arch=cfg.student.name,
                    arch_kwargs=model_kwargs(cfg.student), num_classes=data.num_classes,
                    input_shape=data.input_shape, dataset=data.name, config=plain_config(cfg),
                    metrics={**result, "history": history}, method_state=method_state)
    return {**result, "checkpoint": str(run_dir / CHECKPOINT)}


def train_student(cfg: DictConfig, env: Setup, run_dir: Path, teacher: torch.nn.Module | None = None,
                  make_loss: Callable[[torch.nn.Module], Any] = lambda student: cross_entropy,
                  teacher_logits: torch.Tensor | None = None, teacher_outputs: Any = None,
                  epoch_hooks: Callable[[torch.nn.Module], list[EpochHook]] | None = None,
                  ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Seed, build, train (with a teacher if given) and checkpoint the student; the same recipe either way.

    `make_loss(student)` builds the loss (a method may size its connectors from the student);
    `teacher_outputs`: the teacher's stored outputs (kdrun.teachers.outputs), read instead of running it;
    `epoch_hooks(student)` gives per-epoch extras (e.g. the gradient probe) run before the epoch is recorded.
    """
    data = env.data
    student = build_student(cfg, env)
    loss = as_method(make_loss(student))
    hooks = epoch_hooks(student) if epoch_hooks else []
    extended = extension(cfg, run_dir)  # before training_hooks sets the old summary aside
    resumable = training_hooks(cfg, run_dir)
    # A method that follows the epoch (DKD's and ReviewKD's warm-up), also across a resume.
    loss.start_epoch(resumable["state"]["epoch"] + 1 if resumable["state"] else 1)
    hooks.append(lambda row: loss.start_epoch(int(row["epoch"]) + 1))
    hooks.append(quantization_aware(cfg, student, resumable["state"]["epoch"] + 1 if resumable["state"] else 1))
    with epoch_progress(cfg.progress, "student") as progress:
        history = fit(student, data, recipe_from_optim(cfg.optim, cfg.epochs, cfg.seed, cfg.compile), env.device,
                      loss=loss, teacher=teacher, teacher_logits=teacher_logits, teacher_outputs=teacher_outputs,
                      on_epoch=chain(*hooks, epoch_recorder(run_dir, "student", cfg.epochs)), progress=progress,
                      **resumable)
    resumable["checkpoint"].flush()  # the last last.pt is on disk (or its error raised) before the summary
    fake_quant.detach(student)  # the float weights QAT trained: checkpoint, eager latency and export take it plain
    result = save_student(cfg, run_dir, student, data, history, loss)
    return student, {**result, **qat_summary(cfg), **extended}


def qat_first_epoch(cfg: DictConfig) -> int | None:
    """The first fake-quantized epoch of a `student.quant=qat` run (qat_epochs 0: all), None without QAT."""
    if cfg.student.get("quant", "none") != "qat":
        return None
    return cfg.epochs - cfg.student.qat_epochs + 1 if cfg.student.qat_epochs else 1


def quantization_aware(cfg: DictConfig, student: torch.nn.Module, first_epoch: int) -> EpochHook:
    """Fake-quantize the student (kdrun.deploy.fake_quant) from its first QAT epoch on, also across a resume;
    the teacher stays in full precision. An epoch hook: it runs after each epoch for the next."""
    start = qat_first_epoch(cfg)

    def switch(epoch: int) -> None:
        if start is not None and epoch >= start and not fake_quant.is_attached(student):
            log.info("QAT: the student's %d Linear/Conv layers fake-quantized to INT8 from epoch %d",
                     fake_quant.attach(student), epoch)

    switch(first_epoch)
    return lambda row: switch(int(row["epoch"]) + 1)


def qat_summary(cfg: DictConfig) -> dict[str, Any]:
    start = qat_first_epoch(cfg)
    return {} if start is None else {"quant": {"mode": "qat", "first_epoch": start, "epochs": cfg.epochs - start + 1,
                                               "scheme": fake_quant.SCHEME}}


def exports(cfg: DictConfig) -> bool:
    """export=true, or a QAT student (trained for INT8, so the run exports it)."""
    return bool(cfg.export) or qat_first_epoch(cfg) is not None
