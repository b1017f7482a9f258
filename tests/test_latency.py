"""Latency follows the documented protocol; FLOPs and params are exact for a known model."""

import time

import pytest
import torch
from torch import nn

from kdrun.measure import latency
from kdrun.measure.latency import Protocol, count_flops, measure_models, profile, ratio_interval

CPU = torch.device("cpu")


class Sleeper(nn.Module):
    """A model whose forward takes `ms` milliseconds, and which records when it ran."""

    def __init__(self, ms: float, log: list) -> None:
        super().__init__()
        self.ms, self.log = ms, log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self)
        time.sleep(self.ms / 1000)
        return x


def test_one_model_alone_times_at_least_min_reps_and_reports_the_method():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    result = profile(model, (1, 12), CPU, Protocol(batch_size=8, warmup=2, min_reps=50, min_seconds=0.0))["latency"]
    assert result["reps"] >= 50 and result["protocol"] == "alone"
    assert 0 < result["batch1_ms_iqr"][0] <= result["batch1_ms_median"] <= result["batch1_ms_iqr"][1]
    assert result["batch1_ms_median"] <= result["batch1_ms_p90"]
    assert result["throughput_per_s"] > 0 and result["batch_size"] == 8
    assert result["device"] == "cpu" and result["threads"] == torch.get_num_threads()
    assert {"torch", "cpu", "dtype", "load_before", "load_after", "contended"} <= set(result)


def test_two_models_are_timed_interleaved_and_the_speedup_has_an_interval():
    order = []
    slow, fast = Sleeper(4.0, order), Sleeper(1.0, order)
    result = measure_models({"teacher": slow, "student": fast}, (3,), CPU,
                            Protocol(batch_size=2, warmup=1, min_reps=10, min_seconds=0.0, max_spread=10))
    pairs = list(zip(order[::2], order[1::2]))
    assert all(first is slow and second is fast for first, second in pairs), "t, s, t, s, ..."
    low, high = result["speedup"]["batch1_interval"]
    assert low <= result["speedup"]["batch1"] <= high and 2.5 < result["speedup"]["batch1"] < 5
    assert result["latency"]["teacher"]["protocol"] == "interleaved"


def test_timing_stops_at_max_seconds_whatever_min_reps_asks():
    model = Sleeper(20.0, [])
    result = profile(model, (3,), CPU, Protocol(batch_size=2, warmup=0, min_reps=10_000, min_seconds=0.0,
                                                max_seconds=0.2))
    assert result["latency"]["reps"] <= 11  # 0.2 s of 20 ms passes (sleep only ever takes longer)


def test_a_busy_machine_or_a_wide_spread_marks_the_measurement_contended(monkeypatch):
    model = nn.Linear(3, 3)
    protocol = Protocol(batch_size=2, warmup=0, min_reps=5, min_seconds=0.0, max_spread=1e9)
    monkeypatch.setattr(latency, "runnable_tasks", lambda: 1000)
    busy = profile(model, (3,), CPU, protocol)["latency"]
    assert busy["contended"] and "more runnable tasks than CPUs" in busy["contended_because"]
    assert busy["runnable_median"] == 1000
    monkeypatch.setattr(latency, "runnable_tasks", lambda: 1)
    quiet = profile(model, (3,), CPU, protocol)["latency"]
    assert not quiet["contended"]
    noisy = profile(model, (3,), CPU, Protocol(batch_size=2, warmup=0, min_reps=5, min_seconds=0.0,
                                               max_spread=1e-12))["latency"]
    assert noisy["contended"] and "spread" in noisy["contended_because"]


def test_ratio_interval_covers_the_ratio_of_medians():
    teacher, student = [10.0, 11.0, 9.0, 10.5, 30.0], [2.0, 2.2, 1.9, 2.1, 2.0]
    low, high = ratio_interval(teacher, student)
    assert low <= 10.0 / 2.0 <= high
    assert ratio_interval([5.0] * 20, [1.0] * 20) == pytest.approx([5.0, 5.0])


def test_flops_and_params_of_a_linear_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    assert count_flops(model, torch.randn(1, 1, 12)) == 2 * 12 * 10
    cost = profile(model, (1, 12), CPU, Protocol(batch_size=4, warmup=1, min_reps=50, min_seconds=0.0))
    assert cost["params"] == 12 * 10 + 10 and cost["flops"] == 240
