"""`kdrun inspect-teacher`: what a trained teacher knows, as pictures and numbers.

Writes to the run dir: dark_knowledge.png, class_relationships.png, true_class_prob.png,
knowledge.json (accuracy; ECE with 15 bins, mean entropy and mean true-class probability of
softmax(z/T) on the test set at each T; the class-relationship matrix; the label-smoothing
epsilon that matches the teacher at each T) and summary.json. The teacher is found or trained
exactly as `distill` does (teacher store, `teacher.checkpoint=`, `teacher_epoch=`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from kdrun.commands.record import model_cost, plain_config, run_header
from kdrun.commands.resumable import stop_hook
from kdrun.commands.setup import log, setup
from kdrun.core.console import epoch_progress, show_results
from kdrun.core.errors import KdrunError
from kdrun.core.files import write_json
from kdrun.data.base import TensorData
from kdrun.methods.losses import true_class_prob
from kdrun.run.rundir import write_summary
from kdrun.teachers.knowledge import calibration_by_temperature, class_matrix
from kdrun.teachers.plots import plot_class_matrix, plot_dark_knowledge, plot_true_class_prob
from kdrun.teachers.store import obtain_teacher
from kdrun.train.evaluate import predict


def knowledge_numbers(cfg: DictConfig, train_logits: torch.Tensor, test_logits: torch.Tensor, data: Any) -> dict:
    temperatures = [float(t) for t in cfg.temperatures]
    p_train = true_class_prob(train_logits, data.y_train)
    return {
        "test_acc": (test_logits.argmax(1) == data.y_test).float().mean().item(),
        "train_acc": (train_logits.argmax(1) == data.y_train).float().mean().item(),
        "ece_bins": 15,
        "test_by_temperature": calibration_by_temperature(test_logits, data.y_test, temperatures),
        "train_true_class_prob_T1": {"mean": p_train.mean().item(), "median": p_train.median().item(),
                                     "below_0.5": (p_train < 0.5).float().mean().item()},
        "ls_epsilon_by_temperature": {f"{T:g}": 1 - true_class_prob(train_logits, data.y_train, T).mean().item()
                                      for T in temperatures},
        "class_matrix_T": float(cfg.matrix_T),
        "class_matrix": class_matrix(train_logits, data.y_train, cfg.matrix_T, data.num_classes).cpu().tolist(),
    }


def draw(cfg: DictConfig, run_dir: Path, train_logits: torch.Tensor, test_logits: torch.Tensor, data: Any,
         numbers: dict) -> list[Path]:
    import numpy as np

    shown = test_logits[:cfg.examples].float()
    probs = {float(T): F.softmax(shown / float(T), dim=1).cpu().numpy() for T in cfg.temperatures}
    p_true = {"T=1": true_class_prob(train_logits, data.y_train).cpu().numpy()}
    if float(cfg.matrix_T) != 1.0:
        p_true[f"T={cfg.matrix_T:g}"] = true_class_prob(train_logits, data.y_train, cfg.matrix_T).cpu().numpy()
    return [plot_dark_knowledge(probs, data.y_test[:cfg.examples].cpu().numpy(), run_dir / "dark_knowledge.png"),
            plot_class_matrix(np.array(numbers["class_matrix"]), float(cfg.matrix_T),
                              run_dir / "class_relationships.png"),
            plot_true_class_prob(p_true, run_dir / "true_class_prob.png")]


def run(cfg: DictConfig, run_dir: Path) -> float:
    env = setup(cfg)
    if not isinstance(env.data, TensorData):
        raise KdrunError(f"inspect-teacher needs an in-memory dataset; '{env.data.name}' is streamed from disk")
    with epoch_progress(cfg.progress, "teacher") as progress:
        teacher = obtain_teacher(cfg.teacher, cfg.dataset, env.data, env.device, plain_config(cfg), progress,
                                 epoch=cfg.teacher_epoch, fit_hooks=stop_hook())
    train_logits, test_logits = predict(teacher.model, env.data.x_train), predict(teacher.model, env.data.x_test)
    numbers = knowledge_numbers(cfg, train_logits, test_logits, env.data)
    write_json(run_dir / "knowledge.json", {"teacher": cfg.teacher.name, "checkpoint": str(teacher.checkpoint),
                                            **numbers})
    files = draw(cfg, run_dir, train_logits, test_logits, env.data, numbers)
    summary = {**run_header(cfg, run_dir, env), "model": cfg.teacher.name, "test_acc": numbers["test_acc"],
               "best_test_acc": numbers["test_acc"], "checkpoint": str(teacher.checkpoint),
               "teacher_epoch": cfg.teacher_epoch, **model_cost(teacher.model, env.data, cfg, env.device),
               "knowledge": str(run_dir / "knowledge.json")}
    write_summary(run_dir, summary)
    by_t = numbers["test_by_temperature"]
    log.info("teacher %s: test acc %.2f%%; %s", cfg.teacher.name, 100 * numbers["test_acc"],
             "; ".join(f"T={T}: ECE {v['ece']:.3f}, entropy {v['mean_entropy']:.3f}" for T, v in by_t.items()))
    show_results([{"role": "teacher", "model": cfg.teacher.name, **summary}], title="kdrun inspect-teacher",
                 notes=[*(f"T={T}: ECE {v['ece']:.3f}, mean entropy {v['mean_entropy']:.3f} nats" for T, v in by_t.items()),
                        *(f"wrote {p}" for p in [run_dir / "knowledge.json", *files]), f"run dir: {run_dir}"])
    return numbers["test_acc"]
