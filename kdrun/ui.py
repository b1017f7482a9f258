"""What a person sees: progress bars while training, a results table at the end."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()


class EpochProgress:
    """One bar per epoch over its steps; satisfies engine.StepProgress."""

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
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        yield EpochProgress(progress, label)


def _ms(latency: dict[str, Any]) -> str:
    return f"{latency['batch1_ms_median']:.3f} (p90 {latency['batch1_ms_p90']:.3f})"


def results_table(rows: list[dict[str, Any]], title: str) -> Table:
    """Rows of {role, model, test_acc, params, flops, latency, run_dir}."""
    table = Table(title=title)
    for column, justify in [("role", "left"), ("model", "left"), ("test acc", "right"), ("params", "right"),
                            ("FLOPs", "right"), ("batch-1 ms", "right"), ("throughput/s", "right"),
                            ("run dir / checkpoint", "left")]:
        table.add_column(column, justify=justify, overflow="fold")
    for row in rows:
        table.add_row(row["role"], row["model"], f"{100 * row['test_acc']:.2f}%", f"{row['params']:,}",
                      f"{row['flops']:,}", _ms(row["latency"]), f"{row['latency']['throughput_per_s']:,.0f}",
                      str(row["where"]))
    return table


def show_results(rows: list[dict[str, Any]], title: str, footer: str = "") -> None:
    console.print(results_table(rows, title))
    if footer:
        console.print(footer)
