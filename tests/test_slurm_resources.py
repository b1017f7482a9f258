"""The SLURM launcher's pure parts, without a Slurm: sinfo's gres read as GPUs, resources fitted to a partition and
impossible requests refused in one line naming the option (tests/test_slurm.py runs the rest on a real Slurm)."""

from __future__ import annotations

import pytest

from kdrun.core.errors import KdrunError
from kdrun.sweep.partition import Partition, fit_resources, gpu_count

CPU_NODES = Partition(name="cpu", cpus=2, memory_mb=12052, gpus=0, nodes=2)
GPU_NODES = Partition(name="gpu", cpus=64, memory_mb=512000, gpus=8, nodes=16)
HYDRA_DEFAULTS = {"timeout_min": 240, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": None, "mem_gb": None,
                  "gpus_per_node": None, "signal_delay_s": 120}


@pytest.mark.parametrize("gres, gpus", [("(null)", 0), ("gpu:4", 4), ("gpu:a100:8(S:0-1)", 8),
                                        ("gpu:a100:2,gpu:v100:2", 4), ("shard:8", 0)])
def test_gpus_are_read_from_sinfos_gres(gres, gpus):
    assert gpu_count(gres) == gpus


def test_unset_resources_are_kdruns_preference_capped_by_the_partition():
    cpu = fit_resources(HYDRA_DEFAULTS, CPU_NODES)
    assert (cpu["cpus_per_task"], cpu["mem_gb"], cpu["gpus_per_node"]) == (2, 11, None)
    gpu = fit_resources(HYDRA_DEFAULTS, GPU_NODES)
    assert (gpu["cpus_per_task"], gpu["mem_gb"], gpu["gpus_per_node"]) == (8, 32, 1)
    shared = fit_resources({**HYDRA_DEFAULTS, "tasks_per_node": 2}, CPU_NODES)
    assert shared["cpus_per_task"] == 1, "2 tasks share the node's 2 CPUs"
    assert fit_resources({**HYDRA_DEFAULTS, "cpus_per_task": 1}, GPU_NODES)["cpus_per_task"] == 1, "a set value stays"


@pytest.mark.parametrize("override, message", [
    ({"cpus_per_task": 8}, "hydra.launcher.cpus_per_task=8 asks for 8 CPUs, but partition cpu's nodes have at most 2 "
                           "CPUs; lower hydra.launcher.cpus_per_task"),
    ({"cpus_per_task": 2, "tasks_per_node": 2}, "hydra.launcher.cpus_per_task=2 (x tasks_per_node=2) asks for 4 CPUs"),
    ({"mem_gb": 32}, "hydra.launcher.mem_gb=32 asks for 32768 MB of memory, but partition cpu's nodes have at most "
                     "12052 MB of memory"),
    ({"gpus_per_node": 1}, "hydra.launcher.gpus_per_node=1 asks for 1 GPUs, but partition cpu's nodes have at most 0"),
    ({"nodes": 3}, "hydra.launcher.nodes=3 asks for 3 nodes, but partition cpu has 2 nodes"),
    ({"timeout_min": 2}, "hydra.launcher.timeout_min=2 (120 s) leaves no time to train before submitit's checkpoint "
                         "signal, sent signal_delay_s=120 s before the limit"),
])
def test_an_impossible_request_is_one_line_naming_the_option(override, message):
    with pytest.raises(KdrunError) as refused:
        fit_resources({**HYDRA_DEFAULTS, **override}, CPU_NODES)
    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)
