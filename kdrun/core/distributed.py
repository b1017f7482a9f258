"""One run on several processes: torchrun's or SLURM's environment -> a process group and a `Context`.

`torchrun --nproc_per_node=N -m kdrun distill ...` sets RANK/WORLD_SIZE/LOCAL_RANK and the
master address; a multi-task SLURM job (`hydra/launcher=slurm` with `tasks_per_node`/`nodes`)
sets SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and a node list, which `slurm_environment`
turns into the same variables (submitit's `TorchDistributedEnvironment` parses the node
list). `join` then opens the default process group once per process: NCCL for CUDA tensors,
gloo for CPU ones. `context()` is this process's place in the job; without a job it is
rank 0 of 1, and every collective below is a no-op, so single-process runs pay nothing.

Only rank 0 writes the run directory and the teacher store (`kdrun.core.files.follow_rank`).
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist

from kdrun.core.errors import KdrunError
from kdrun.core.jobenv import under_torchrun

# A collective that waits longer than this fails instead of hanging; the wait for a teacher
# that rank 0 trains alone goes through the store, which has no such limit.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
STORE_WAIT = timedelta(days=7)


@dataclass(frozen=True)
class Context:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Any) -> Any:
        """This rank's strided share of a global batch (a tensor or a list): ranks interleave, sizes differ by <= 1."""
        return items[self.rank::self.world_size]


_context = Context()


def context() -> Context:
    return _context


def slurm_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """torch's env:// variables for this SLURM task: rank and world from SLURM_PROCID/SLURM_NTASKS, the local
    rank from SLURM_LOCALID, the master the first host of SLURM_JOB_NODELIST, its port derived from the job id."""
    from unittest import mock

    from submitit.helpers import TorchDistributedEnvironment

    # submitit's jobs say they are SLURM's; tasks started by a plain srun have only SLURM's variables.
    with mock.patch.dict(os.environ, {"SUBMITIT_EXECUTOR": "slurm", **environ}, clear=True):
        slurm = TorchDistributedEnvironment()
    return {"MASTER_ADDR": slurm.master_addr, "MASTER_PORT": str(slurm.master_port), "RANK": str(slurm.rank),
            "WORLD_SIZE": str(slurm.world_size), "LOCAL_RANK": str(slurm.local_rank),
            "LOCAL_WORLD_SIZE": str(slurm.local_world_size)}


def join() -> Context:
    """Open the process group from the environment (once per process) and record this rank's context."""
    global _context
    if dist.is_initialized():
        return _context
    if not under_torchrun():
        try:
            os.environ.update(slurm_environment())
        except ImportError:
            raise KdrunError("a multi-task SLURM job needs submitit to read its environment: "
                             "pip install 'kdrun[sweep]'") from None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    _context = Context(dist.get_rank(), dist.get_world_size(), local_rank)
    return _context


def enter_job() -> Context:
    """This process's part in a job of several: join the group; only rank 0 writes files, logs and prints."""
    from kdrun.core.console import console
    from kdrun.core.files import follow_rank

    ctx = join()
    follow_rank(ctx.rank)
    if not ctx.is_main:
        _quiet()
        console.quiet = True
    return ctx


@contextmanager
def collective_failures() -> Iterator[None]:
    """Turn a failed collective (a rank died, a peer timed out) into one line instead of a traceback; leave
    the group when the run ends well."""
    try:
        yield
    except (RuntimeError, dist.DistError) as error:
        if not _is_collective_failure(error):
            raise
        raise KdrunError(f"rank {_context.rank} of {_context.world_size}: the job's process group failed "
                         f"({_first_line(error)}); another rank failed or was killed: see its error") from None
    dist.destroy_process_group()


def _quiet() -> None:
    """Ranks other than 0 log warnings only, and never to the run's log file."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.WARNING)


COLLECTIVE_FAILURE = ("gloo", "nccl", "Connection closed", "Connection reset", "timed out", "Timeout", "c10d",
                      "ProcessGroup", "Broken pipe")


def _is_collective_failure(error: Exception) -> bool:
    return isinstance(error, dist.DistError) or any(marker in str(error) for marker in COLLECTIVE_FAILURE)


def _first_line(error: Exception) -> str:
    """The first sentence of a collective's error, without gloo's source-location prefix."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0] if lines else type(error).__name__)
    return text.split(". ")[0][:160]


def device_for(device: torch.device) -> torch.device:
    """A CUDA run on several processes uses one GPU per process: the local rank's."""
    if _context.distributed and device.type == "cuda":
        return torch.device("cuda", _context.local_rank % torch.cuda.device_count())
    return device


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over all ranks, in place (no-op on one process)."""
    if _context.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def share_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics): each rank updated them from its own
    share of the last batches, and the checkpoint rank 0 writes holds rank 0's."""
    if _context.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on one: a stop request must stop all ranks after the same step."""
    if not _context.distributed:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not _context.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def publish(key: str, value: str) -> None:
    """Rank 0 posts a value under `key` in the job's store (no collective: nobody's clock is running)."""
    if _context.distributed:
        _store().set(f"kdrun/{key}", value)


def wait_for(key: str) -> str:
    """Block until rank 0 has published `key`, however long it takes (e.g. while it trains a teacher)."""
    store = _store()
    store.wait([f"kdrun/{key}"], STORE_WAIT)
    return store.get(f"kdrun/{key}").decode()


def _store() -> Any:
    return dist.distributed_c10d._get_default_store()


def barrier() -> None:
    if _context.distributed:
        dist.barrier()
