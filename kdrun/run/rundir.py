"""The run directory's one owner: its file names, atomic writes, metrics, status, summary and lock.

`summary.json` is written last: its presence means the run finished. A run that fails
gets `status.json` with the error instead, so nothing unfinished looks finished. A run
holds its directory's lock (`.kdrun.lock`, an flock the OS drops with the process) for its
whole life, so no second process writes into it. No torch here: the CLI and `report` use it too.

In a job of several processes (torchrun, SLURM) only rank 0 writes run outputs and holds the
lock (`kdrun.core.files.writes`).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout
from omegaconf import OmegaConf

from kdrun.core.errors import KdrunError
from kdrun.core.files import umask, write_atomic, write_json, writes

SUMMARY = "summary.json"  # written last: the run finished
STATUS = "status.json"  # a run that did not finish: failed or interrupted
METRICS = "metrics.jsonl"  # one JSON object per epoch
CHECKPOINT = "checkpoint.pt"  # the trained model (kdrun.models.checkpoint format)
LAST = "last.pt"  # the resumable training state (kdrun.train.state)
HYDRA = ".hydra"  # Hydra's config (interpolations kept) and overrides
RESOLVED = "resolved.yaml"  # in HYDRA: the config with every interpolation (${now:}, ${oc.env:}) resolved
LOCK = ".kdrun.lock"  # held by the process that runs in this directory
MULTIRUN = "multirun.yaml"  # a sweep directory's own config (written by Hydra's basic sweeper)
OUTPUTS = (SUMMARY, STATUS, METRICS, CHECKPOINT, LAST)  # what makes a directory hold a run


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    if not writes():
        return
    with open(run_dir / METRICS, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def objective(summary: dict[str, Any]) -> float:
    """What a run returns to a sweeper (Optuna maximises it): the best validation accuracy when the run held a
    validation split out, so a tuned choice never sees the test set; else the final test accuracy."""
    return float(summary.get("best_val_acc", summary.get("test_acc", math.nan)))


def tidy_finished(run_dir: Path, keep_last: bool) -> None:
    """A finished run's resumable state goes (a sweep's disk use would grow by one optimiser state per job)
    unless `keep_last`; checkpoint.pt, the trained model, stays. Only once summary.json is there."""
    if writes() and not keep_last and (run_dir / SUMMARY).exists():
        (run_dir / LAST).unlink(missing_ok=True)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    path = run_dir / SUMMARY
    write_json(path, summary)
    return path


def write_status(run_dir: Path, status: str, **fields: Any) -> None:
    """`status.json` for a run that did not finish: `failed` (with the error) or `interrupted` (with how to resume)."""
    write_json(run_dir / STATUS, {"status": status, **fields})


def delete_status(run_dir: Path) -> None:
    """A resumed run is running again: its old `interrupted` status no longer holds."""
    if not writes():
        return
    (run_dir / STATUS).unlink(missing_ok=True)


def write_failure(run_dir: Path, message: str, rerun_fixes: bool = True) -> None:
    """`failed` with the one line; `rerun_fixes: false` marks a failure the job's settings cause (kdrun.core.errors)."""
    write_status(run_dir, "failed", error=message, **({} if rerun_fixes else {"rerun_fixes": False}))


def failed_for_good(run_dir: Path) -> bool:
    """Whether the job failed for its own settings: a rerun would fail the same way."""
    try:
        status = json.loads((run_dir / STATUS).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(status, dict) and status.get("status") == "failed" and status.get("rerun_fixes") is False


def write_resolved(hydra_dir: Path, config: Any) -> None:
    """The config as this run resolved it: `${now:...}` and `${oc.env:...}` mean something else tomorrow, so
    resume and report read these values, not the interpolations Hydra saved."""
    if writes():
        text = OmegaConf.to_yaml(config, resolve=True)
        write_atomic(hydra_dir / RESOLVED, lambda f: f.write(text.encode()))


def saved_overrides(path: Path) -> list[str]:
    """A run's `.hydra/overrides.yaml` as the text typed (`${now:...}` kept, never resolved on reading)."""
    try:
        lines = OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else []
    except Exception as error:  # noqa: BLE001 - not text, not YAML, unreadable
        raise KdrunError(f"{path} cannot be read ({type(error).__name__}); it was damaged or edited") from None
    if not isinstance(lines, list) or not all(isinstance(line, (str, int, float)) for line in lines):
        raise KdrunError(f"{path} is not a list of overrides; it was damaged or edited")
    return [str(line) for line in lines]


def saved_config(run_dir: Path) -> Path:
    """The run's saved config: resolved where this kdrun wrote one, else Hydra's (older runs)."""
    resolved = run_dir / HYDRA / RESOLVED
    return resolved if resolved.is_file() else run_dir / HYDRA / "config.yaml"


def holds_run(run_dir: Path) -> bool:
    """A run wrote here (finished or not); only `.hydra/` and a log mean it died before writing anything."""
    return any((run_dir / name).exists() for name in OUTPUTS)


def run_state(run_dir: Path) -> tuple[str, str]:
    """`finished`, `failed`, `interrupted` or `unfinished`, and the detail a person needs (error, resume command).
    A run whose process died without a word (`died_without_a_word`) is recorded as failed now."""
    if (run_dir / SUMMARY).exists():
        return "finished", ""
    try:
        status = json.loads((run_dir / STATUS).read_text())
    except (OSError, ValueError):
        if died_without_a_word(run_dir):
            write_failure(run_dir, KILLED)
            return "failed", KILLED
        return "unfinished", "no summary.json: killed, or still running"
    if not isinstance(status, dict):
        return "unfinished", f"{STATUS} is damaged"
    return str(status.get("status", "unfinished")), str(status.get("error") or status.get("resume") or "")


KILLED = ("the process ended without a word: killed (by the kernel for lack of memory, by SIGKILL) or its machine "
          "went down; resume it with resume=RUN_DIR if it has last.pt, else run it again")


def died_without_a_word(run_dir: Path) -> bool:
    """A run that took its lock and is gone without a summary or a status: nobody holds the lock now, so the
    process died where no handler runs (the kernel's OOM killer, SIGKILL)."""
    if not (run_dir / LOCK).exists() or (run_dir / STATUS).exists():
        return False
    try:
        with _lock(run_dir).acquire(timeout=0):
            return not (run_dir / SUMMARY).exists()
    except (Timeout, OSError):  # still running, or a run dir we may not write
        return False


def forget_unfinished(run_dir: Path) -> None:
    """Clear what a failed attempt left (metrics, status, a checkpoint) so a fresh attempt starts clean here."""
    for name in (STATUS, METRICS, CHECKPOINT):
        (run_dir / name).unlink(missing_ok=True)


def rewrite_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Replace metrics.jsonl by `rows` (a resumed run's history), so no epoch appears twice."""
    if not writes():
        return
    write_atomic(run_dir / METRICS, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))




class RunDirInUse(KdrunError):
    """Another live process holds this run directory."""


def _lock(run_dir: Path) -> FileLock:
    return FileLock(str(run_dir / LOCK), mode=0o666 & ~umask())


_held: set[Path] = set()  # the dirs this process holds: the CLI takes a run's before Hydra, its task holds it on


@contextmanager
def owned(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for the life of a run; a second process gets a one-line error instead of writing into it.
    In a job of several processes rank 0 holds it for all. Holding it again in the same process is a no-op."""
    key = run_dir.resolve()
    if not writes() or key in _held:
        yield
        return
    lock = _lock(run_dir)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunDirInUse(f"{run_dir} is in use by another kdrun process; wait for it to end, "
                         "or start a new run elsewhere") from None
    _held.add(key)
    try:
        yield
    finally:
        _held.discard(key)
        lock.release()


def check_not_in_use(run_dir: Path) -> None:
    """Raise the `owned` error now (before Hydra rewrites the dir's .hydra/ and log) if another process holds it."""
    if writes() and (run_dir / LOCK).exists():
        with owned(run_dir):
            pass
