"""Inference cost of models: latency and throughput measured side by side, parameters and FLOPs.

The protocol (docs: "Latency protocol"). Eval and inference mode, float32, fixed input shapes
(batch 1, and the larger `batch_size`: the training batch by default). The models of one run
(teacher and student) are measured in the same process under the same settings, interleaved
(t, s, t, s, ...) after a warm-up, so a change in machine load hits both alike. At each batch size
every model gets the same number of rounds: at least `min_reps`, until the slowest model has been
timed for `min_seconds`, and never beyond `max_seconds` of it.
Reported: the median, its interquartile range and p90 per model; the speedup (ratio of
medians) with a 95% bootstrap interval over the interleaved rounds. The conditions are recorded
with the numbers (device, dtype, threads, torch, CPU model, load average before and after, the
median run queue while timing), and a measurement taken on a busy machine (more runnable tasks
than CPUs in the median read of the run queue, every few rounds) or too noisy (IQR / median above
`max_spread`) is marked `contended`. Times are never cached: each run measures its own.
On CUDA each repetition is timed with CUDA events after a synchronize.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdrun.core.jobenv import runnable_tasks
from kdrun.models.registry import count_params

MAX_REPS = 10_000
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_CHUNK = 100
RUNNABLE_EVERY = 10  # rounds between two reads of the machine's run queue


@dataclass(frozen=True)
class Protocol:
    """How long and how often to time (the `latency` config group)."""

    batch_size: int = 256
    warmup: int = 5
    min_reps: int = 20
    min_seconds: float = 0.1
    max_seconds: float = 3.0
    max_spread: float = 0.5


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """A function that runs a callable once and returns its wall time in milliseconds."""
    if device.type == "cuda":
        def cuda_time(fn: Callable[[], object]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end)
        return cuda_time

    def host_time(fn: Callable[[], object]) -> float:
        started = time.perf_counter()
        fn()
        if device.type == "mps":
            torch.mps.synchronize()
        return (time.perf_counter() - started) * 1000
    return host_time


def interleaved_times(models: list[Callable[[torch.Tensor], Any]], inputs: torch.Tensor, protocol: Protocol,
                      runnable: list[int] | None = None) -> list[list[float]]:
    """Milliseconds per forward of `inputs`, one list per model, timed in rounds (each model once per round).
    `runnable` collects the machine's runnable-task count every `RUNNABLE_EVERY` rounds (contention)."""
    timer = _timer(inputs.device)
    forwards = [lambda model=model: model(inputs) for model in models]
    times: list[list[float]] = [[] for _ in models]
    spent_ms = [0.0 for _ in models]  # running totals: the loop's check stays O(1) per round
    with torch.inference_mode():
        for _ in range(protocol.warmup):
            for forward in forwards:
                timer(forward)
        while len(times[0]) < MAX_REPS:  # the slowest model sets the pace: every model gets as many rounds
            spent = max(spent_ms) / 1000
            enough = len(times[0]) >= protocol.min_reps and spent >= protocol.min_seconds
            if enough or spent >= protocol.max_seconds:
                break
            if runnable is not None and len(times[0]) % RUNNABLE_EVERY == 0:
                runnable.append(runnable_tasks() or 0)
            for i, forward in enumerate(forwards):
                times[i].append(timer(forward))
                spent_ms[i] += times[i][-1]
    return times


def _quantile(sorted_times: list[float], q: float) -> float:
    return sorted_times[min(len(sorted_times) - 1, int(q * len(sorted_times)))]


def summarise(times: list[float]) -> dict[str, float]:
    """Median, interquartile range, p90 and the count of one model's repetitions."""
    ordered = sorted(times)
    q1, q3 = _quantile(ordered, 0.25), _quantile(ordered, 0.75)
    median = statistics.median(ordered)
    return {"median": median, "iqr": [q1, q3], "p90": _quantile(ordered, 0.9), "reps": len(ordered),
            "spread": (q3 - q1) / median if median > 0 else 0.0}


def ratio_interval(numerator: list[float], denominator: list[float], seed: int = 0) -> list[float]:
    """A 95% bootstrap interval of median(numerator) / median(denominator), resampling whole rounds."""
    rounds = np.column_stack([numerator, denominator])
    draw, ratios = np.random.default_rng(seed), []
    for _ in range(BOOTSTRAP_SAMPLES // BOOTSTRAP_CHUNK):  # chunks keep the index array small for long runs
        sample = rounds[draw.integers(0, len(rounds), size=(BOOTSTRAP_CHUNK, len(rounds)))]
        medians = np.median(sample, axis=1)
        ratios.append(medians[:, 0] / medians[:, 1])
    low, high = np.quantile(np.concatenate(ratios), [0.025, 0.975])
    return [float(low), float(high)]


def cpu_model() -> str:
    """The processor's name, as the OS reports it (for the record, not for logic)."""
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        if names:
            return names[0]
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def conditions(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured under, besides the load (recorded around the timing)."""
    return {"device": str(device), "dtype": "float32", "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu": cpu_model(), "machine_cpus": os.cpu_count() or 1}


def _at_batch(models: list[Callable[[torch.Tensor], Any]], shape: tuple[int, ...], batch: int, device: torch.device,
              protocol: Protocol, runnable: list[int]) -> tuple[list[dict[str, Any]], list[list[float]]]:
    times = interleaved_times(models, torch.randn(batch, *shape, device=device), protocol, runnable)
    return [summarise(t) for t in times], times


def measure_models(models: dict[str, nn.Module], input_shape: tuple[int, ...], device: torch.device,
                   protocol: Protocol) -> dict[str, Any]:
    """Each model's `latency` block (batch 1 and `protocol.batch_size`, interleaved), and for two models
    (first the reference, e.g. the teacher) `speedup`: the reference's time over the other's, with its interval
    (for more models, `speedups`: one such block per model after the first)."""
    return measure_forwards({name: m.to(device).eval() for name, m in models.items()}, input_shape, device, protocol)


def measure_forwards(forwards: dict[str, Callable[[torch.Tensor], Any]], input_shape: tuple[int, ...],
                     device: torch.device, protocol: Protocol) -> dict[str, Any]:
    """`measure_models` for any callables of a batch (ONNX Runtime sessions, kdrun.deploy.runtime): the same
    protocol, so eager and deployed times are read alike."""
    names, modules = list(forwards), list(forwards.values())
    load_before, runnable = load_average(), []
    one, one_times = _at_batch(modules, input_shape, 1, device, protocol, runnable)
    big, big_times = _at_batch(modules, input_shape, protocol.batch_size, device, protocol, runnable)
    load_after = load_average()
    where = conditions(device)
    # Read between rounds, the run queue holds this process and whatever else wants a CPU: more than the CPUs, most
    # of the time, means the timings shared the machine (single reads catch passing commands: the median does not).
    busy = statistics.median(runnable or [0]) > where["machine_cpus"]
    noisy = max(s["spread"] for s in one + big) > protocol.max_spread
    shared = {**where, "load_before": load_before, "load_after": load_after,
              "runnable_median": statistics.median(runnable) if runnable else None, "contended": busy or noisy,
              "contended_because": ", ".join(r for r, on in (("more runnable tasks than CPUs", busy),
                                                             (f"spread above {protocol.max_spread:g}", noisy)) if on),
              "protocol": "interleaved" if len(modules) > 1 else "alone"}
    result: dict[str, Any] = {"latency": {}}
    for i, name in enumerate(names):
        result["latency"][name] = {
            "batch1_ms_median": one[i]["median"], "batch1_ms_iqr": one[i]["iqr"], "batch1_ms_p90": one[i]["p90"],
            "reps": one[i]["reps"], "batch_size": protocol.batch_size,
            "batch_ms_median": big[i]["median"], "batch_ms_iqr": big[i]["iqr"],
            "throughput_per_s": protocol.batch_size / (big[i]["median"] / 1000), **shared}
    speedups = {name: {"batch1": one[0]["median"] / one[i]["median"],
                       "batch1_interval": ratio_interval(one_times[0], one_times[i]),
                       "batch": big[0]["median"] / big[i]["median"],
                       "batch_interval": ratio_interval(big_times[0], big_times[i])}
                for i, name in enumerate(names) if i > 0}
    if len(modules) == 2:
        result["speedup"] = speedups[names[1]]
    elif len(modules) > 2:  # every other model against the first
        result["speedups"] = speedups
    return result


def count_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass (a multiply-add counts as 2), from PyTorch's counter."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(inputs)
    return counter.get_total_flops()


def size(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> dict[str, int]:
    """Parameters and FLOPs at batch 1: deterministic, so they may be cached (unlike times)."""
    model = model.to(device).eval()
    return {"params": count_params(model), "flops": count_flops(model, torch.randn(1, *input_shape, device=device))}


def profile(model: nn.Module, input_shape: tuple[int, ...], device: torch.device, protocol: Protocol) -> dict:
    """Params, FLOPs and latency of one model measured alone (a run without a second model to compare)."""
    return {**size(model, input_shape, device),
            "latency": measure_models({"model": model}, input_shape, device, protocol)["latency"]["model"]}
