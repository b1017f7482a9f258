"""`make bench` (`--pairs stored`): a 4-student sweep with the teacher run live vs its outputs stored once.

On an image folder of CIFAR-shaped PNG files (written here, read and augmented by DataLoader
workers), a teacher several times the student's cost distils into four students (seeds 0-3),
once with `teacher.outputs=live` (the teacher runs on every batch of every student) and once
with `teacher.outputs=store` (the first student's epochs build the store, the others read it).
The runs alternate live/stored so a change in machine load hits both alike. It reports seconds
per epoch (the stored row for the students that only read; the building student apart), the
whole sweep's seconds, and the samples the teacher ran on: the goal is one pass per
(sample, epoch) for the whole sweep and a stored epoch at most 0.6x a live one.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.table import Table

from kdrun.core.console import console
from kdrun.core.runtime import resolve_device, seed_everything, set_threads
from kdrun.data import load_dataset
from kdrun.data.synthetic import write_image_folder
from kdrun.measure.latency import size
from kdrun.methods.losses import KDLoss
from kdrun.models import build_model
from kdrun.teachers.outputs import open_store
from kdrun.train.engine import fit
from kdrun.train.recipe import Recipe

STORED = {"teacher": "resnet56", "student": "resnet8", "classes": 10, "images": 320, "side": 32, "batch_size": 64,
          "students": 4, "top_k": 10}


def samples_seen(model: torch.nn.Module) -> list[int]:
    """A one-number list that grows by the samples `model` runs on."""
    seen = [0]
    model.register_forward_hook(lambda module, args, out: seen.__setitem__(0, seen[0] + len(args[0])))
    return seen


def run_stored_bench(device_name: str, epochs: int, workers: int, images: int) -> dict:
    spec, device = STORED, resolve_device(device_name)
    load_before = os.getloadavg()[0]
    set_threads(0)  # the threads that fit the machine's load: oversubscribed convolutions run several times slower
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_image_folder(root / "images", classes=spec["classes"], train_per_class=max(1, images // spec["classes"]),
                           val_per_class=4, size=(spec["side"], spec["side"]), formats=("png",))
        data = load_dataset("image_folder", str(root / "images"), False, True, {}, image_size=spec["side"],
                            workers=workers)
        seed_everything(0)
        teacher = build_model(spec["teacher"], data.num_classes, data.input_shape, {}).to(device)
        flops = {role: size(build_model(spec[role], data.num_classes, data.input_shape, {}), data.input_shape,
                            device)["flops"] for role in ("teacher", "student")}
        forwards = samples_seen(teacher)
        recipe = Recipe(epochs=epochs, batch_size=spec["batch_size"], lr=1e-3)
        seconds: dict[str, list[list[float]]] = {"live": [], "store": []}
        sweep_seconds = {"live": 0.0, "store": 0.0}
        teacher_samples = {"live": 0, "store": 0}
        for student_seed in range(spec["students"]):
            for mode in ("live", "store"):
                seed_everything(student_seed)
                student = build_model(spec["student"], data.num_classes, data.input_shape, {}).to(device)
                store = (open_store(root / "teachers", spec["teacher"], {"weights": "random, seed 0"}, teacher, data,
                                    recipe.seed, spec["top_k"], device) if mode == "store" else None)
                before, started = forwards[0], time.perf_counter()
                history = fit(student, data, recipe, device, teacher=teacher, loss=KDLoss(4.0, 0.9),
                              teacher_outputs=store)
                sweep_seconds[mode] += time.perf_counter() - started
                teacher_samples[mode] += forwards[0] - before
                seconds[mode].append([row["seconds"] for row in history])
    live_epoch = statistics.median(s for run in seconds["live"] for s in run)
    stored_epoch = statistics.median(s for run in seconds["store"][1:] for s in run)
    return {"pair": "stored", "teacher": spec["teacher"], "student": spec["student"],
            "dataset": f"PNG image folder, {spec['side']}x{spec['side']}, RandomResizedCrop + flip",
            "train_samples": data.train_size, "epochs": epochs, "students": spec["students"], "top_k": spec["top_k"],
            "batch_size": recipe.batch_size, "workers": data.workers, "device": str(device),
            "threads": torch.get_num_threads(), "flops": flops,
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # other jobs on the machine
            "live_epoch_seconds": live_epoch, "stored_epoch_seconds": stored_epoch,
            "building_epoch_seconds": statistics.median(seconds["store"][0]),
            "epoch_ratio": stored_epoch / live_epoch, "sweep_seconds": sweep_seconds,
            "teacher_samples": teacher_samples,
            "passes_per_sample_epoch": {mode: teacher_samples[mode] / (data.train_size * epochs)
                                        for mode in teacher_samples}}


def show_stored(result: dict) -> None:
    n, flops = result["train_samples"], result["flops"]
    table = Table(title=f"{result['teacher']} ({flops['teacher'] / 1e6:.0f} MFLOPs) -> {result['student']} "
                        f"({flops['student'] / 1e6:.0f} MFLOPs), {result['students']} students x {result['epochs']} "
                        f"epochs on a {result['dataset']}, {n} images ({result['device']}, "
                        f"{result['workers']} workers, {result['threads']} threads, load average "
                        f"{result['load_average'][0]:g} -> {result['load_average'][1]:g})")
    columns = ("teacher outputs", "s/epoch", "ratio to live", "sweep s", "teacher samples", "passes/(sample, epoch)")
    for column in columns:
        table.add_column(column, justify="left" if column == "teacher outputs" else "right")
    live = result["live_epoch_seconds"]
    for mode, label, epoch in (("live", "live (every batch, every student)", live),
                               ("store", f"stored top-{result['top_k']} (students 2-4 read)",
                                result["stored_epoch_seconds"])):
        table.add_row(label, f"{epoch:.3f}", f"{epoch / live:.2f}x", f"{result['sweep_seconds'][mode]:.1f}",
                      f"{result['teacher_samples'][mode]:,}", f"{result['passes_per_sample_epoch'][mode]:.2f}")
    table.add_row("stored, student 1 (builds the store)", f"{result['building_epoch_seconds']:.3f}",
                  f"{result['building_epoch_seconds'] / live:.2f}x", "", "", "")
    console.print(table)
    console.print(f"stored epoch / live epoch: {result['epoch_ratio']:.2f}x (goal <= 0.6x); teacher passes per "
                  f"(sample, epoch) for the whole sweep: {result['passes_per_sample_epoch']['store']:.2f} (goal 1)")
