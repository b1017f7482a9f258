"""`make bench`: what a distillation epoch costs, measured side by side in one process.

For a teacher/student pair on the same data it times whole `--epochs`-epoch runs (median of
`--repeats`, after a warm-up) and reports seconds per epoch:
  plain        the student alone on hard labels (kdrun's loop)
  kd cached    distillation with the teacher's logits computed once (no augmentation)
  kd live      distillation with the teacher run on every batch (what augmentation needs)
  bare loop    a hand-written PyTorch loop doing the cached-KD work, as a yardstick
and prints images/s and ratios to `plain`, plus device, dtype, batch size and threads.
Results also go to outputs/bench/<time>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from rich.table import Table

from kdrun.data import TensorData, load_dataset
from kdrun.engine import Recipe, autocast, fit, predict
from kdrun.losses import KDLoss
from kdrun.models import build_model
from kdrun.runio import write_json
from kdrun.runtime import resolve_device, seed_everything
from kdrun.ui import console

PAIRS = {
    "mnist1d": {"teacher": ("cnn1d", {"channels": 64}), "student": ("mlp", {"hidden": [100, 100]}),
                "dataset": ("mnist1d", {}), "batch_size": 100},
    "cifar": {"teacher": ("resnet32x4", {}), "student": ("resnet8x4", {}),
              "dataset": ("fake", {"shape": [3, 32, 32], "num_classes": 100, "num_train": 512, "num_test": 64}),
              "batch_size": 64},
}


def _bare_loop(student: torch.nn.Module, teacher: torch.nn.Module, data: TensorData, recipe: Recipe,
               loss: KDLoss) -> None:
    """The same work as kdrun's cached-KD run, written the way a paper's script would."""
    teacher_logits = predict(teacher, data.x_train)
    optimizer = torch.optim.AdamW(student.parameters(), lr=recipe.lr)
    for _ in range(recipe.epochs):
        student.train()
        for index in torch.randperm(len(data.x_train), device=data.x_train.device).split(recipe.batch_size):
            with autocast(data.x_train.device):
                logits = student(data.x_train[index]).float()
            total = loss(logits, data.y_train[index], teacher_logits[index]).total
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
        (predict(student, data.x_test).argmax(1) == data.y_test).float().mean().item()


def _median_seconds(run_epoch: Callable[[], None], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats + 1):  # the first repetition is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        run_epoch()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def run_bench(pair: str, device_name: str, repeats: int, epochs: int) -> dict:
    spec = PAIRS[pair]
    device = resolve_device(device_name)
    name, kwargs = spec["dataset"]
    data = load_dataset(name, "~/.cache/kdrun/data", False, False, kwargs).to(device)
    seed_everything(0)
    teacher = build_model(spec["teacher"][0], data.num_classes, data.input_shape, spec["teacher"][1]).to(device)
    student = build_model(spec["student"][0], data.num_classes, data.input_shape, spec["student"][1]).to(device)
    recipe, loss = Recipe(epochs=epochs, batch_size=spec["batch_size"], lr=1e-3), KDLoss(4.0, 0.9)
    live = replace(data, augment=lambda x, generator: x)  # identity "augmentation" forces the live path
    scenarios = {
        "plain (student alone)": lambda: fit(student, data, recipe, device),
        "kd, cached teacher logits": lambda: fit(student, data, recipe, device, teacher=teacher, kd_loss=loss),
        "kd, teacher run every batch": lambda: fit(student, live, recipe, device, teacher=teacher, kd_loss=loss),
        "bare PyTorch loop (cached kd)": lambda: _bare_loop(student, teacher, data, recipe, loss),
    }
    seconds = {label: _median_seconds(fn, repeats, device) / epochs for label, fn in scenarios.items()}
    return {"pair": pair, "teacher": spec["teacher"][0], "student": spec["student"][0], "dataset": name,
            "train_samples": len(data.x_train), "batch_size": recipe.batch_size, "device": str(device),
            "dtype": "bf16 autocast" if device.type == "cuda" else "float32", "threads": torch.get_num_threads(),
            "repeats": repeats, "epochs_per_repeat": epochs, "epoch_seconds": seconds}


def show(result: dict) -> None:
    seconds, n = result["epoch_seconds"], result["train_samples"]
    plain = seconds["plain (student alone)"]
    table = Table(title=f"{result['teacher']} -> {result['student']} on {result['dataset']} "
                        f"({result['device']}, {result['dtype']}, batch {result['batch_size']}, "
                        f"{result['threads']} threads)")
    for column in ("epoch", "s/epoch", "images/s", "ratio to plain"):
        table.add_column(column, justify="left" if column == "epoch" else "right")
    for label, value in seconds.items():
        table.add_row(label, f"{value:.3f}", f"{n / value:,.0f}", f"{value / plain:.2f}x")
    console.print(table)
    bare = seconds["bare PyTorch loop (cached kd)"]
    console.print(f"kdrun cached-kd epoch / bare loop epoch: {seconds['kd, cached teacher logits'] / bare:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdrun.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per scenario (median taken)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run: the cache fill is amortised over them")
    args = parser.parse_args(argv)
    results = []
    for pair in args.pairs:
        results.append(run_bench(pair, args.device, args.repeats, args.epochs))
        show(results[-1])
    out = Path("outputs/bench") / f"{datetime.now():%Y-%m-%d_%H-%M-%S_%f}.json"
    write_json(out, {"results": results})
    console.print(f"written: {out.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
