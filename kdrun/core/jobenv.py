"""Which launcher started this process as one of several, and which CPUs it may use, read from the
environment and the OS (no torch here).

torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a SLURM step of several tasks (Hydra's submitit launcher
with `tasks_per_node` or `nodes` > 1) sets SLURM_NTASKS/SLURM_PROCID/SLURM_LOCALID instead.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from pathlib import Path
from typing import Mapping, Optional


def under_torchrun(environ: Mapping[str, str] = os.environ) -> bool:
    return int(environ.get("WORLD_SIZE", "1")) > 1


def in_slurm_tasks(environ: Mapping[str, str] = os.environ) -> bool:
    return "SLURM_PROCID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1


def launched(environ: Mapping[str, str] = os.environ) -> bool:
    """True when this process is one rank of a job of several."""
    return under_torchrun(environ) or in_slurm_tasks(environ)


def _cgroup_quota() -> Optional[float]:
    """CPUs allowed by the cgroup's CPU quota (v2 cpu.max, v1 cfs_quota_us/cfs_period_us); None if unlimited."""
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            fields = Path(quota_file).read_text().split()
            quota, period = fields[0], (fields[1] if period_file is None else Path(period_file).read_text().strip())
        except (OSError, IndexError):
            continue
        if quota not in ("max", "-1"):
            return int(quota) / int(period)
    return None


def _local_tasks(environ: Mapping[str, str]) -> int:
    """Processes of this job on this node that share its CPUs: torchrun's local ranks, or SLURM's tasks per node
    when SLURM gave no per-task CPU count."""
    if int(environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        return int(environ["LOCAL_WORLD_SIZE"])
    if "SLURM_CPUS_PER_TASK" not in environ and "SLURM_TASKS_PER_NODE" in environ:
        return int(re.match(r"\d+", environ["SLURM_TASKS_PER_NODE"]).group())  # e.g. "2(x3)": 2 here
    return 1


def usable_cpus(environ: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """How many CPUs this process may use, and what limits it: affinity, cgroup quota, SLURM, torchrun's share."""
    cpus, limit = os.cpu_count() or 1, "the machine"
    candidates = [(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus, "CPU affinity"),
                  (_cgroup_quota(), "the cgroup's CPU quota"),
                  (int(environ["SLURM_CPUS_PER_TASK"]) if environ.get("SLURM_CPUS_PER_TASK") else None,
                   "SLURM_CPUS_PER_TASK")]
    for value, why in candidates:
        if value is not None and int(value) < cpus:
            cpus, limit = max(1, int(value)), why
    tasks = _local_tasks(environ)
    if tasks > 1:
        cpus, limit = max(1, cpus // tasks), f"{limit}, shared by {tasks} processes of this job on this node"
    return cpus, limit


def runnable_tasks() -> Optional[int]:
    """Tasks runnable on the machine right now, this one included (/proc/loadavg), or None where there is none."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def others_running(samples: int = 5, interval: float = 0.01) -> Optional[float]:
    """Runnable tasks other than this one right now (the median of a few reads), or None."""
    counts = []
    for _ in range(samples):
        count = runnable_tasks()
        if count is None:
            return None
        counts.append(count - 1)
        time.sleep(interval)
    return max(0.0, statistics.median(counts))


def available_memory() -> Optional[int]:
    """Bytes of memory this process could still get: the kernel's MemAvailable, capped by a cgroup limit; None
    where neither can be read (not Linux)."""
    limits = []
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        limits.append(int(fields["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            limits.append(int(text))
    return min(limits) if limits else None

