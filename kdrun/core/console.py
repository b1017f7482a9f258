"""What a person sees: progress bars while training, a results table at the end."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def silence_stdout() -> None:
    """Send what is still to be printed to /dev/null: the reader is gone, and a log line it misses is no error."""
    logging.raiseExceptions = False  # the write that raised SIGPIPE fails inside a log handler: no traceback
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class PipeSafeConsole(Console):
    """A console whose reader may leave (`kdrun ... | head`). Rich's default then exits(1) mid-epoch, leaving
    no status; here the rest of the output goes to /dev/null and SIGPIPE stops the run after its step, which
    saves last.pt and status.json like SIGTERM does (kdrun.run.signals)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        silence_stdout()


# Piped into a log file, rich would squeeze report tables into 80 columns; give them room.
console = PipeSafeConsole(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)


class LineHandler(logging.StreamHandler):
    """Off a terminal (a CI log, a SLURM output file, `| tee`): each record is one line, whatever its length
    (rich would wrap it at 80 columns under a time column); warnings and errors say so first."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def format(self, record: logging.LogRecord) -> str:
        line = " ".join(super().format(record).split("\n"))
        return line if record.levelno < logging.WARNING else f"{record.levelname}: {line}"

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):  # the reader left: as PipeSafeConsole does
            silence_stdout()
            return
        super().handleError(record)


def on_terminal() -> bool:
    return sys.stdout.isatty()


EPOCH_LINES = 10  # epoch lines a run shows on the console at most; its log file gets every epoch


def epoch_extra(epoch: int, epochs: int) -> dict[str, Any]:
    """`extra=` for an epoch's log record: a long run shows every k-th epoch and its last on the console."""
    every = -(-epochs // EPOCH_LINES)
    return {"console": epoch == epochs or epoch % every == 0}


def console_records(record: logging.LogRecord) -> bool:
    """The console's filter: records marked `console: False` (epoch_extra) go to the log file only."""
    return getattr(record, "console", True)


def log_handler(**kwargs: Any) -> logging.Handler:
    """conf/hydra/job_logging's console handler: rich on a terminal (on a pipe-safe console of its width),
    one plain line per record elsewhere."""
    handler = RichHandler(console=PipeSafeConsole(), **kwargs) if on_terminal() else LineHandler()
    handler.addFilter(console_records)
    return handler


class EpochProgress:
    """One bar per epoch over its steps; satisfies kdrun.train.engine.StepProgress."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress, self.label, self.task = progress, label, None

    def start_epoch(self, epoch: int, steps: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"{self.label} epoch {epoch}", total=steps)

    def advance(self) -> None:
        self.progress.advance(self.task)


@contextmanager
def epoch_progress(enabled: bool, label: str) -> Iterator[Optional[EpochProgress]]:
    """Bars on a terminal only: in a log file the epoch lines say the same once per epoch."""
    if not enabled or not on_terminal():
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        yield EpochProgress(progress, label)


def _ms(latency: dict[str, Any]) -> str:
    return f"{latency['batch1_ms_median']:.3f} ({latency['batch1_ms_p90']:.3f})"


def _si(number: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.2f}{unit}"
    return f"{number:.0f}"


def results_table(rows: list[dict[str, Any]], title: str) -> Table:
    """Rows of {role, model, test_acc, params, flops, latency} (and test_top5, where known)."""
    table = Table(title=title)
    top5 = any("test_top5" in row for row in rows)  # 5 classes or more
    for column, justify in [("role", "left"), ("model", "left"), ("test acc", "right"), *([("top-5", "right")] * top5),
                            ("params", "right"), ("FLOPs", "right"), ("batch-1 ms (p90)", "right"), ("images/s", "right")]:
        table.add_column(column, justify=justify)
    for row in rows:
        top5_cell = [f"{100 * row['test_top5']:.2f}%" if "test_top5" in row else ""] * top5
        table.add_row(row["role"], row["model"], f"{100 * row['test_acc']:.2f}%", *top5_cell, _si(row["params"]),
                      _si(row["flops"]), _ms(row["latency"]), _si(row["latency"]["throughput_per_s"]))
    return table


_in_sweep = False  # a job of a sweep: the sweep's report is its table (kdrun.sweep.callbacks)


def in_sweep(flag: bool = True) -> None:
    """Jobs of a sweep show one line each; the sweep ends with its report as the one table."""
    global _in_sweep
    _in_sweep = flag


def show_results(rows: list[dict[str, Any]], title: str, notes: list[str]) -> None:
    """The table, then one line per note (paths, speedup): long paths stay copyable. In a sweep, one line."""
    if _in_sweep:
        last = rows[-1]
        top5 = f", top-5 {100 * last['test_top5']:.2f}%" if "test_top5" in last else ""
        where = next((note for note in notes if note.startswith("run dir:")), "")
        console.print(f"{title}: {last['role']} {last['model']}: test acc {100 * last['test_acc']:.2f}%{top5}; "
                      f"{where}", soft_wrap=True)
        return
    console.print(results_table(rows, title))
    for note in notes:
        console.print(note, soft_wrap=True)
