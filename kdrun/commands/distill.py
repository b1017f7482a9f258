"""`kdrun distill`: the recipe of one distillation run, top to bottom."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig

from kdrun.commands.export import deploy_notes, export_block
from kdrun.commands.record import EpochHook, epoch_line, pair_cost, plain_config, run_header
from kdrun.commands.resumable import stop_hook
from kdrun.commands.setup import Setup, log, setup
from kdrun.commands.train_student import exports, train_student
from kdrun.core.console import epoch_progress, show_results
from kdrun.core.distributed import context
from kdrun.core.errors import KdrunError
from kdrun.methods.base import Method, MethodContext, build_method
from kdrun.methods.params import parse_params, resolved_alpha
from kdrun.models.views import view_of
from kdrun.run.rundir import objective, write_summary
from kdrun.teachers.facts import TeacherFacts, teacher_facts
from kdrun.teachers.knowledge import ProbeSet, TeacherStats, gradient_probe, probe_subset, teacher_stats
from kdrun.teachers.outputs import OutputStore, open_store
from kdrun.teachers.store import Teacher, obtain_teacher


def probe_set(cfg: DictConfig, env: Setup, teacher_logits: torch.Tensor) -> Optional[ProbeSet]:
    """The gradient-rescaling probe's examples (cfg.probe) among the teacher's reference inputs; None if off."""
    if not cfg.probe:
        return None
    x, y = env.data.teacher_reference(env.device)
    index = probe_subset(len(x), cfg.probe_examples).to(env.device)
    return ProbeSet(x[index], teacher_logits[index], y[index])


def epoch_hooks(cfg: DictConfig, env: Setup,
                teacher_logits: torch.Tensor) -> Callable[[torch.nn.Module], list[EpochHook]]:
    """Per-epoch extras for the student: the gradient-rescaling probe (cfg.probe)."""
    probe = probe_set(cfg, env, teacher_logits)
    return lambda student: [] if probe is None else [gradient_probe(student, probe, cfg.T)]


def prepare_teacher(cfg: DictConfig, env: Setup) -> tuple[Teacher, TeacherFacts]:
    """The teacher (stored, or trained now) and its training-set logits and cost, shared across the sweep."""
    with epoch_progress(cfg.progress, "teacher") as progress:
        teacher = obtain_teacher(cfg.teacher, cfg.dataset, env.data, env.device, plain_config(cfg), progress,
                                 epoch_line("teacher", cfg.teacher.train.epochs), epoch=cfg.teacher_epoch, fit_hooks=stop_hook())
    return teacher, teacher_facts(teacher.model, teacher.checkpoint, Path(cfg.teacher.store), env.data, env.device)


def output_store(cfg: DictConfig, env: Setup, teacher: Teacher) -> Optional[OutputStore]:
    """The teacher's stored outputs for this data, augmentation and seed (`teacher.outputs=store`), else None."""
    if cfg.teacher.outputs != "store":
        return None
    if context().distributed:
        raise KdrunError("teacher.outputs=store runs in one process for now; use teacher.outputs=live under torchrun")
    store = open_store(Path(cfg.teacher.store), cfg.teacher.name, teacher.source, teacher.model, env.data,
                       cfg.seed, cfg.teacher.top_k, env.device)
    log.info("teacher outputs: top-%d logits per (sample, epoch) from %s", cfg.teacher.top_k, store.directory)
    return store


def outputs_summary(cfg: DictConfig, store: Optional[OutputStore]) -> dict[str, Any]:
    """How this run got its teacher's outputs; with a store, where, and how many samples it ran the teacher on."""
    if store is None:
        return {"mode": "live"}
    return {"mode": "store", "top_k": cfg.teacher.top_k, "store": str(store.directory),
            "samples_run_through_teacher": store.forwarded}


def job_stats(cfg: DictConfig, env: Setup, facts: TeacherFacts) -> TeacherStats:
    """The teacher's statistics at this job's T (ls and kd_sim are built from them)."""
    labels = env.data.teacher_reference(env.device)[1]  # of the inputs facts.train_logits are for
    return teacher_stats(facts.train_logits, labels, cfg.T, env.data.num_classes)


def loss_weights(cfg: DictConfig) -> tuple[float, float]:
    """(CE weight, KD weight) of a KD-family loss (kd, ls, kd_pt, kd_sim): explicit, or from alpha."""
    return parse_params(cfg.loss, cfg.alpha).weights(cfg.alpha)


def weights_text(cfg: DictConfig, alpha: Optional[float]) -> str:
    """How this run weighs its terms, for the results table: alpha, or the explicit loss weights."""
    if alpha is not None:
        return f"alpha={alpha:g}"
    return f"ce_weight={cfg.loss.ce_weight:g} kd_weight={cfg.loss.kd_weight:g}"


def job_loss(cfg: DictConfig, env: Setup, stats: TeacherStats, teacher: torch.nn.Module,
             student: torch.nn.Module) -> Method:
    """This job's distillation method (`loss=`), sized for this teacher and student."""
    data = env.data
    sample = data.teacher_reference(env.device)[0][:2]  # to probe the stage shapes
    context = MethodContext(cfg.T, cfg.alpha, data.num_classes, data.train_size, student, teacher, sample,
                            getattr(data, "y_train", None), stats)
    for role, model in (("teacher", teacher), ("student", student)):
        view = view_of(model).describe(data.input_shape)
        if view["source"] != "dataset":  # a view of its own (resized, renormalised): worth a line; summary.json has both
            log.info("%s sees %s", role, view)
    method = build_method(cfg.loss, context)
    for key, value in method.summary().items():
        log.info("%s: %s = %s", cfg.loss.name, key, value)
    return method


def finish(cfg: DictConfig, env: Setup, run_dir: Path, teacher: Teacher, facts: TeacherFacts, stats: TeacherStats,
           loss: Method, student: torch.nn.Module, result: dict[str, Any],
           cost: Optional[dict[str, Any]] = None, store: Optional[OutputStore] = None) -> float:
    """summary.json (written last) and the results table for a trained student. `cost`: the pair's latency
    measured for a whole stacked group (kdrun.record.pair_cost); else it is measured now."""
    cost = cost or pair_cost(cfg, env, teacher.model, student)
    speedup = cost["speedup"]
    alpha = resolved_alpha(cfg.alpha, parse_params(cfg.loss, cfg.alpha))
    stream = env.data.input_shape
    summary = {**run_header(cfg, run_dir, env), "model": cfg.student.name, "view": view_of(student).describe(stream),
               "T": cfg.T, "alpha": alpha,
               "loss": cfg.loss.name, "loss_options": plain_config(cfg)["loss"], **loss.summary(),
               "label_noise": cfg.dataset.label_noise, **result, **cost["student"],
               "latency": cost["latency"]["student"],
               "teacher": {"model": cfg.teacher.name, "test_acc": teacher.test_acc, **facts.size,
                           "latency": cost["latency"]["teacher"],
                           "checkpoint": str(teacher.checkpoint), "checkpoint_format": teacher.source.get("format"),
                           "checkpoint_sha256": teacher.source.get("sha256"), "weights": cfg.teacher.weights,
                           "epoch": cfg.teacher_epoch,
                           "label_smoothing": cfg.teacher.train.label_smoothing,
                           "view": view_of(teacher.model).describe(stream),
                           "train_nontarget_mass_at_T": stats.epsilon,
                           "outputs": outputs_summary(cfg, store)},
               "speedup": speedup["batch1"], "speedup_interval": speedup["batch1_interval"],
               "speedup_at_batch": speedup["batch"], "speedup_at_batch_interval": speedup["batch_interval"]}
    if exports(cfg):
        summary["deploy"] = export_block(cfg, run_dir, env.data, student, teacher.model)
    write_summary(run_dir, summary)
    low, high = speedup["batch1_interval"]
    show_results([{"role": "teacher", "model": cfg.teacher.name, **summary["teacher"]},
                  {"role": f"student loss={cfg.loss.name} T={cfg.T:g} {weights_text(cfg, alpha)}", "model": cfg.student.name,
                   **summary}],
                 title="kdrun distill", notes=[f"batch-1 speedup over the teacher: {speedup['batch1']:.1f}x "
                                               f"(this measurement's 95% interval {low:.2f}-{high:.2f}x; "
                                               "separate runs vary more)"
                                               + (" [contended]" if summary["latency"]["contended"] else ""),
                                               *deploy_notes(summary), f"teacher checkpoint: {teacher.checkpoint}", f"run dir: {run_dir}"])
    return objective(summary)


def run(cfg: DictConfig, run_dir: Path) -> float:
    env = setup(cfg)
    teacher, facts = prepare_teacher(cfg, env)
    stats = job_stats(cfg, env, facts)
    built: list[Method] = []  # the method, built once the student exists (connectors are sized from it)

    def make_loss(student: torch.nn.Module) -> Method:
        built.append(job_loss(cfg, env, stats, teacher.model, student))
        return built[0]

    store = output_store(cfg, env, teacher)
    student, result = train_student(cfg, env, run_dir, teacher.model, make_loss=make_loss,
                                    teacher_logits=facts.train_logits, teacher_outputs=store,
                                    epoch_hooks=epoch_hooks(cfg, env, facts.train_logits))
    return finish(cfg, env, run_dir, teacher, facts, stats, built[0], student, result, store=store)
