"""The report for people and tools: the table, report.csv, report.md and the plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from kdrun.core.errors import KdrunError
from kdrun.core.files import write_atomic
from kdrun.report.rows import build_report
from kdrun.report.runs import DEPLOYED, FIXED, HEADERS, Report, Row, Stat


def _pct(stat: Stat | None) -> str:
    if stat is None:
        return ""
    return f"{100 * stat.mean:.2f}" + (f" ± {100 * stat.std:.2f}" if stat.std is not None else "")


def _fmt(value: float | None, pattern: str, scale: float = 1.0) -> str:
    return "" if value is None else pattern.format(scale * value)


def headers(report: Report) -> list[str]:
    return [*FIXED, *report.keys, "seeds", *HEADERS]


def cells(report: Report, row: Row) -> list[str]:
    """A row as the table and Markdown show it: accuracies in %, gain in percentage points."""
    return [row.role, str(row.field("model")), str(row.field("dataset")),
            *(row.setting.get(k, "") for k in report.keys), str(len(row.runs)),
            _pct(row.stat("test_acc")), _pct(row.maybe_stat("test_top5")), _pct(row.maybe_stat("test_acc_at_best_val")), _pct(row.stat("best_test_acc")),
            _fmt(row.gain, "{:+.2f}", 100),
            _fmt(row.mean("teacher", "test_acc"), "{:.2f}", 100),
            _fmt(row.median("latency", "batch1_ms_median"), "{:.3f}"), speedup_cell(row), *deployed_cells(row)]


def deployed_cells(row: Row) -> list[str]:
    """ONNX Runtime batch-1 ms of the fp32 and INT8 student, INT8 accuracy, the best deployed speedup over the
    teacher (runs that exported; empty otherwise)."""
    fp32 = row.median(*DEPLOYED, "student_fp32", "latency", "batch1_ms_median")
    int8 = row.median(*DEPLOYED, "student_int8", "latency", "batch1_ms_median")
    times = "/".join(_fmt(ms, "{:.3f}") or "-" for ms in (fp32, int8)) if fp32 is not None else ""
    int8_acc = row.mean(*DEPLOYED, "student_int8", "test_acc")
    return [times, _fmt(int8_acc, "{:.2f}", 100), _fmt(deployed_speedup(row), "{:.1f}x")]


def deployed_speedup(row: Row) -> float | None:
    """The median over runs of the teacher's ONNX Runtime batch-1 time over the fastest student's (fp32 or INT8)."""
    gains = [max(s["batch1"] for s in run.summary["deploy"]["speedups"].values()) for run in row.runs
             if isinstance(run.summary.get("deploy"), dict) and run.summary["deploy"].get("speedup_over") == "teacher_fp32"]
    return sorted(gains)[len(gains) // 2] if gains else None


def speedup_cell(row: Row) -> str:
    """The median speedup, its interval, and `*` where a run was measured under contention (not to be ranked)."""
    speedup, interval = row.median("speedup"), row.speedup_interval()
    if speedup is None:
        return ""
    shown = f"{speedup:.1f}x" + (f" [{interval[0]:.1f}-{interval[1]:.1f}]" if interval else "")
    return shown + (" *" if row.contended() else "")


def record(report: Report, row: Row) -> dict[str, Any]:
    """A row for CSV: the same columns, numbers unformatted in summary.json's units (fractions, ms)."""
    test, best, honest = row.stat("test_acc"), row.stat("best_test_acc"), row.maybe_stat("test_acc_at_best_val")
    top5 = row.maybe_stat("test_top5")
    return {"role": row.role, "model": row.field("model"), "dataset": row.field("dataset"),
            **{k: row.setting.get(k, "") for k in report.keys}, "seeds": test.n,
            "test_acc_mean": test.mean, "test_acc_std": test.std,
            "test_top5_mean": top5.mean if top5 else None, "test_top5_std": top5.std if top5 else None,
            "test_acc_at_best_val_mean": honest.mean if honest else None,
            "test_acc_at_best_val_std": honest.std if honest else None,
            "best_test_acc_mean": best.mean,
            "best_test_acc_std": best.std, "gain": row.gain, "teacher_test_acc": row.mean("teacher", "test_acc"),
            "batch1_ms": row.median("latency", "batch1_ms_median"), "speedup": row.median("speedup"),
            "speedup_low": (row.speedup_interval() or (None, None))[0],
            "speedup_high": (row.speedup_interval() or (None, None))[1], "latency_contended": row.contended(),
            "ort_fp32_batch1_ms": row.median(*DEPLOYED, "student_fp32", "latency", "batch1_ms_median"),
            "ort_int8_batch1_ms": row.median(*DEPLOYED, "student_int8", "latency", "batch1_ms_median"),
            "int8_test_acc": row.mean(*DEPLOYED, "student_int8", "test_acc"), "deployed_speedup": deployed_speedup(row)}


def shown(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and cells for people: columns empty in every row are left out (the CSV keeps them)."""
    names, rows = headers(report), [cells(report, row) for row in report.rows]
    keep = [i for i in range(len(names)) if any(row[i] for row in rows)]
    return [names[i] for i in keep], [[row[i] for i in keep] for row in rows]


def table(report: Report) -> Table:
    runs = sum(len(row.runs) for row in report.rows)
    result = Table(box=box.SIMPLE_HEAD, title=f"kdrun report: {runs} run(s) in {len(report.rows)} row(s)",
                   caption="accuracy: mean ± sample std over seeds; gain: final accuracy minus the baseline's")
    names, rows = shown(report)
    for name in names:
        result.add_column(name, justify="left" if name in (*FIXED, *report.keys) else "right")
    for row in rows:
        result.add_row(*row)
    return result


def write_csv(report: Report, path: Path) -> Path:
    """Written atomically, as every report file: a file (or a planted symlink) at `path` is replaced, never
    written through."""
    records = [record(report, row) for row in report.rows]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    write_atomic(path, lambda f: f.write(text.getvalue().encode()))
    return path


def write_markdown(report: Report, path: Path) -> Path:
    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    names, rows = shown(report)
    lines = ["Accuracy in %: mean ± sample std over the seeds; gain in percentage points of final accuracy "
             "over the baseline with the same recipe.", "", line(names), line(["---"] * len(names)),
             *(line(row) for row in rows), "", *(f"- {note}" for note in report.notes)]
    write_atomic(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))
    return path


def make_report(paths: list[Path], out: Path | None = None) -> Report:
    """Build the report and write report.csv, report.md and the plots; the files are listed in it."""
    from kdrun.report.plots import (  # matplotlib: only when plotting
        plot_acc_by_setting,
        plot_acc_vs_deployed_latency,
        plot_acc_vs_latency,
        plot_acc_vs_t,
    )

    report = build_report(paths)
    target = out if out is not None else (paths[0] if paths[0].is_dir() else paths[0].parent)  # a file's folder
    try:
        target.mkdir(parents=True, exist_ok=True)
        report.files = [write_csv(report, target / "report.csv"), write_markdown(report, target / "report.md")]
        report.files += [p for p in (plot_acc_vs_t(report.rows, target / "acc_vs_T.png"),
                                     plot_acc_vs_latency(report.rows, target / "acc_vs_latency.png"),
                                     plot_acc_vs_deployed_latency(report.rows, target / "acc_vs_deployed_latency.png"),
                                     plot_acc_by_setting(report, target / "acc_by_setting.png")) if p]
    except OSError as error:
        raise KdrunError(f"cannot write the report to {target} ({error.strerror or error}); "
                         "pass --out DIR somewhere writable") from None
    return report


def show_report(report: Report) -> None:
    """The table, then the notes and the files written, one line each."""
    from kdrun.core.console import console

    console.print(table(report))
    for note in report.notes:
        console.print(f"note: {note}", soft_wrap=True)
    for path in report.files:
        console.print(f"wrote {path}", soft_wrap=True)
