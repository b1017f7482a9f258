"""What a SLURM partition can give one job (`sinfo`), the job's resources fitted to it, and an impossible request
refused before anything is submitted (no torch, no submitit here).

A request no node can satisfy would otherwise be rejected by sbatch (with EnforcePartLimits) or pend for ever with
Reason=PartitionConfig; the settings a user leaves unset get kdrun's preferred values, capped by the partition.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Optional

from kdrun.core.errors import KdrunError

# What a job asks for when the user sets nothing: a slice of a GPU node; capped by what the partition's nodes have.
PREFERRED = {"cpus_per_task": 8, "mem_gb": 32, "gpus_per_node": 1}


@dataclass(frozen=True)
class Partition:
    """The largest node of a partition (a job of one node fits there or nowhere) and how many nodes it has."""

    name: str
    cpus: int
    memory_mb: int
    gpus: int
    nodes: int


def gpu_count(gres: str) -> int:
    """GPUs in a node's gres string: `gpu:4`, `gpu:a100:4(S:0-1)`, `(null)`."""
    return sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,()]+)?:(\d+)", gres))


def read_partition(name: Optional[str]) -> Partition:
    """The partition `name` (None: the cluster's default one, marked `*` by sinfo); a one-line error if there is
    no SLURM here or no such partition."""
    if shutil.which("sinfo") is None:
        raise KdrunError("hydra/launcher=slurm needs SLURM's commands (sinfo, sbatch) on this machine; run the sweep "
                         "on a cluster's login node, or use hydra/launcher=local_parallel here")
    done = subprocess.run(["sinfo", "-h", "-o", "%P|%c|%m|%G|%D"], capture_output=True, text=True)
    if done.returncode != 0:
        raise KdrunError(f"sinfo failed ({(done.stderr.strip().splitlines() or ['no output'])[-1]}); is SLURM up?")
    rows = [line.split("|") for line in done.stdout.splitlines() if line.count("|") == 4]
    wanted = [r for r in rows if (r[0].rstrip("*") == name if name else r[0].endswith("*"))]
    if not wanted:
        known = ", ".join(sorted({r[0].rstrip("*") for r in rows})) or "none"
        raise KdrunError(f"hydra.launcher.partition={name} is not a partition of this cluster; choose one of: {known}"
                         if name else f"this cluster has no default partition; set hydra.launcher.partition "
                                      f"(one of: {known})")
    return Partition(name=wanted[0][0].rstrip("*"), cpus=max(int(r[1].rstrip("+")) for r in wanted),
                     memory_mb=max(int(r[2].rstrip("+")) for r in wanted),
                     gpus=max(gpu_count(r[3]) for r in wanted), nodes=sum(int(r[4]) for r in wanted))


def fit_resources(params: dict[str, Any], partition: Partition) -> dict[str, Any]:
    """The launcher's parameters with unset resources filled in (kdrun's preference, capped by the partition) and
    every request checked against it: a one-line error naming the option that no node can satisfy."""
    fitted = dict(params)
    tasks = int(fitted.get("tasks_per_node") or 1)
    ceilings = {"cpus_per_task": max(1, partition.cpus // tasks), "mem_gb": partition.memory_mb // 1024,
                "gpus_per_node": partition.gpus}
    for key, preferred in PREFERRED.items():
        if fitted.get(key) is None:
            fitted[key] = min(preferred, ceilings[key]) or None  # 0 GB or 0 GPUs: leave it to SLURM
    where = f"partition {partition.name}'s nodes have"
    checks = [("cpus_per_task", tasks * int(fitted["cpus_per_task"] or 1), partition.cpus, "CPUs",
               f" (x tasks_per_node={tasks})" if tasks > 1 else ""),
              ("mem_gb", 1024 * int(fitted["mem_gb"] or 0), partition.memory_mb, "MB of memory", ""),
              ("gpus_per_node", int(fitted["gpus_per_node"] or 0), partition.gpus, "GPUs", ""),
              ("nodes", int(fitted.get("nodes") or 1), partition.nodes, "nodes", "")]
    for key, asked, available, unit, detail in checks:
        if asked > available:
            has = f"{where} at most {available} {unit}" if key != "nodes" else f"partition {partition.name} has " \
                                                                               f"{available} nodes"
            raise KdrunError(f"hydra.launcher.{key}={fitted[key]}{detail} asks for {asked} {unit}, but {has}; "
                             f"lower hydra.launcher.{key} (or leave it unset to fit the partition)")
    timeout_s, signal_s = 60 * int(fitted.get("timeout_min") or 0), int(fitted.get("signal_delay_s") or 0)
    if timeout_s <= signal_s:
        raise KdrunError(f"hydra.launcher.timeout_min={fitted.get('timeout_min')} ({timeout_s} s) leaves no time to "
                         f"train before submitit's checkpoint signal, sent signal_delay_s={signal_s} s before the "
                         "limit; raise timeout_min or lower hydra.launcher.signal_delay_s")
    return fitted
