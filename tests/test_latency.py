"""Latency follows the stated method; FLOPs and params are exact for a known model."""

import torch
from torch import nn

from kdrun.measure.latency import count_flops, measure, profile


def test_measure_times_at_least_min_reps_and_reports_the_method():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    result = measure(model, (1, 12), torch.device("cpu"), batch_size=8, warmup=2, min_reps=50, min_seconds=0.0)
    assert result["reps"] >= 50
    assert 0 < result["batch1_ms_median"] <= result["batch1_ms_p90"]
    assert result["throughput_per_s"] > 0 and result["batch_size"] == 8
    assert result["device"] == "cpu" and result["threads"] == torch.get_num_threads()


def test_flops_and_params_of_a_linear_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    assert count_flops(model, torch.randn(1, 1, 12)) == 2 * 12 * 10
    cost = profile(model, (1, 12), torch.device("cpu"), batch_size=4, warmup=1, min_reps=50, min_seconds=0.0)
    assert cost["params"] == 12 * 10 + 10 and cost["flops"] == 240
