"""Inference cost of a model: batch-1 latency, throughput, parameters, FLOPs.

Method: eval and inference mode, a fixed input shape, warm-up first, then at least
`min_reps` timed repetitions and at least `min_seconds`; report the median and p90. On
CUDA each repetition is timed with CUDA events after a synchronize.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdrun.models.registry import count_params

MAX_REPS = 10_000


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


def time_forward(model: nn.Module, inputs: torch.Tensor, warmup: int, min_reps: int,
                 min_seconds: float) -> list[float]:
    """Milliseconds per forward pass of `inputs`, one entry per timed repetition."""
    timer = _timer(inputs.device)
    forward = lambda: model(inputs)  # noqa: E731
    with torch.inference_mode():
        for _ in range(warmup):
            timer(forward)
        times: list[float] = []
        while len(times) < MAX_REPS and (len(times) < min_reps or sum(times) < min_seconds * 1000):
            times.append(timer(forward))
    return times


def count_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass (a multiply-add counts as 2), from PyTorch's counter."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(inputs)
    return counter.get_total_flops()


def measure(model: nn.Module, input_shape: tuple[int, ...], device: torch.device, batch_size: int = 256,
            warmup: int = 10, min_reps: int = 50, min_seconds: float = 0.5) -> dict[str, object]:
    """Batch-1 latency (median, p90) and throughput at `batch_size`, with how they were taken."""
    model = model.to(device).eval()
    one = torch.randn(1, *input_shape, device=device)
    batch = torch.randn(batch_size, *input_shape, device=device)
    batch1 = sorted(time_forward(model, one, warmup, min_reps, min_seconds))
    batched = time_forward(model, batch, max(2, warmup // 5), max(5, min_reps // 5), min_seconds / 2)
    return {
        "batch1_ms_median": statistics.median(batch1),
        "batch1_ms_p90": batch1[min(len(batch1) - 1, int(0.9 * len(batch1)))],
        "reps": len(batch1),
        "throughput_per_s": batch_size / (statistics.median(batched) / 1000),
        "batch_size": batch_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def profile(model: nn.Module, input_shape: tuple[int, ...], device: torch.device, **latency_options: float) -> dict:
    """Params, FLOPs (batch 1) and latency: the cost side of a model in every summary."""
    model = model.to(device).eval()
    return {"params": count_params(model), "flops": count_flops(model, torch.randn(1, *input_shape, device=device)),
            "latency": measure(model, input_shape, device, **latency_options)}
