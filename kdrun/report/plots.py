"""The report's plots: student accuracy against T, and accuracy against batch-1 latency.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so a report works on a
headless machine and leaves no global backend state behind.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from kdrun.core.files import write_atomic
from kdrun.report.runs import Report, Row, Stat

STYLES = {"teacher": ("s", "C0"), "baseline": ("D", "C1"), "distill": ("o", "C2")}  # role: marker, colour


def new_axes() -> tuple[Figure, Axes]:
    figure = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def plain_numbers(axes: Axes) -> None:
    """x tick labels like 0.02 and 4 rather than 2x10^-2 on log axes."""
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_locator(NullLocator())


def save(figure: Figure, axes: Axes, path: Path) -> Path:
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")  # beside the plot, never over it
    figure.tight_layout()
    write_atomic(path, lambda f: figure.savefig(f, dpi=120, format="png"))  # replaces, never writes through
    return path


def line_label(row: Row) -> str:
    """One line per alpha (and per value of any other swept key but T); a run weighted by explicit
    loss.ce_weight/loss.kd_weight has no alpha (None in its summary)."""
    alpha = row.field("alpha")
    others = [f"{k}={v}" for k, v in row.setting.items() if k not in ("T", "alpha")]
    named = [f"alpha={alpha:g}"] if alpha is not None else []
    return ", ".join(named + others) or "explicit loss weights"


def teachers(rows: list[Row]) -> dict[tuple[str, str], Row]:
    """The first distill row per (teacher model, dataset): where its teacher's numbers are read."""
    found: dict[tuple[str, str], Row] = {}
    for row in rows:
        if row.command == "distill":
            found.setdefault((row.values("teacher", "model")[0], row.field("dataset")), row)
    return found


def plot_acc_vs_t(rows: list[Row], path: Path) -> Path | None:
    """Final accuracy against T (error bars: std over seeds), teacher and baselines as lines; None without distill."""
    students = [row for row in rows if row.command == "distill"]
    if not students:
        return None
    figure, axes = new_axes()
    lines: dict[str, list[Row]] = {}
    for row in sorted(students, key=lambda r: r.field("T")):
        lines.setdefault(line_label(row), []).append(row)
    for label, members in lines.items():
        stats = [row.stat("test_acc") for row in members]
        axes.errorbar([row.field("T") for row in members], [100 * s.mean for s in stats],
                      yerr=[100 * (s.std or 0.0) for s in stats], marker="o", capsize=3, label=label)
    for (model, _), row in teachers(students).items():
        axes.axhline(100 * row.mean("teacher", "test_acc"), color="black", linewidth=1.5, label=f"teacher {model}")
    for row in (r for r in rows if r.command == "train_student"):
        acc = row.stat("test_acc")
        axes.axhline(100 * acc.mean, color="gray", linestyle="--", label=row.label())
        if acc.std is not None:
            axes.axhspan(100 * (acc.mean - acc.std), 100 * (acc.mean + acc.std), color="gray", alpha=0.15)
    temperatures = sorted({row.field("T") for row in students})
    if temperatures[-1] >= 4 * temperatures[0]:
        axes.set_xscale("log", base=2)
    axes.set_xticks(temperatures)
    plain_numbers(axes)
    axes.set(xlabel="temperature T", ylabel="final test accuracy (%)",
             title="Student accuracy vs temperature (mean ± std over seeds)")
    return save(figure, axes, path)


def plot_acc_vs_latency(rows: list[Row], path: Path) -> Path:
    """Every model in the set, teachers included, at its batch-1 latency and mean final accuracy."""
    figure, axes = new_axes()
    points = [(row.role, row.label() + (" (contended)" if row.contended() else ""),
               row.median("latency", "batch1_ms_median"), row.stat("test_acc")) for row in rows]
    shown = {(row.field("model"), row.field("dataset")) for row in rows if row.command == "train_teacher"}
    points += [("teacher", f"teacher {model}", row.median("teacher", "latency", "batch1_ms_median"),
                Stat(row.mean("teacher", "test_acc"), None, len(row.runs)))
               for (model, dataset), row in teachers(rows).items() if (model, dataset) not in shown]
    labelled = set()
    for role, label, ms, acc in points:
        marker, colour = STYLES.get(role, ("x", "C3"))
        axes.errorbar(ms, 100 * acc.mean, yerr=100 * (acc.std or 0.0), marker=marker, color=colour, capsize=3,
                      label=None if role in labelled else role,
                      markerfacecolor="none" if label.endswith("(contended)") else colour)
        labelled.add(role)
    latency_axis(axes, "batch-1 latency (ms, median)", "final test accuracy (%)",
                 "Accuracy vs latency (mean ± std over seeds)")
    label_points(axes, [(label, ms, 100 * acc.mean) for _, label, ms, acc in points])
    return save(figure, axes, path)


def label_points(axes: Axes, labels: list[tuple[str, float, float]]) -> None:
    """Each point's label beside it; where labels would overlap (a sweep's students share one latency), adjustText
    moves them apart and ties each to its point with a thin line. Call once the axes' scales are set."""
    from adjustText import adjust_text

    texts = [axes.text(x, y, f" {text}", fontsize=7) for text, x, y in labels]
    if len(texts) > 1:
        adjust_text(texts, ax=axes, arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5})


def latency_axis(axes: Axes, xlabel: str, ylabel: str, title: str) -> None:
    """A log latency axis with plain 1-2-5 ticks and room for the points' labels."""
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axes.margins(x=0.2)
    plain_numbers(axes)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)


DEPLOYED_STYLES = {"teacher_fp32": ("s", "C0"), "student_fp32": ("o", "C2"), "student_int8": ("^", "C3")}


def deployed_points(rows: list[Row]) -> list[tuple[str, str, float, float]]:
    """(model kind, label, ONNX Runtime batch-1 ms, mean test accuracy) of every exported model of every row."""
    points = {}
    for row in rows:
        for kind in DEPLOYED_STYLES:
            ms = row.median("deploy", "models", kind, "latency", "batch1_ms_median")
            acc = row.mean("deploy", "models", kind, "test_acc")
            if ms is not None and acc is not None:
                teacher = kind == "teacher_fp32"
                who = f"teacher {row.values('teacher', 'model')[0]}" if teacher else row.label()
                key = (kind, tuple(row.values("teacher", "checkpoint")) if teacher else row.label())  # a teacher once
                points[key] = (kind, f"{who} {kind.split('_')[1]}", ms, acc)
    return list(points.values())


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (latency, accuracy) points no other point beats on both (faster or as fast, and more accurate), by latency."""
    front: list[tuple[float, float]] = []
    for ms, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((ms, acc))
    return front


def plot_acc_vs_deployed_latency(rows: list[Row], path: Path) -> Path | None:
    """Accuracy against ONNX Runtime batch-1 latency of every exported model (fp32 and INT8 students, teachers),
    the Pareto front marked; None when no run exported."""
    points = deployed_points(rows)
    if not points:
        return None
    figure, axes = new_axes()
    labelled = set()
    for kind, label, ms, acc in points:
        marker, colour = DEPLOYED_STYLES[kind]
        axes.plot(ms, 100 * acc, marker=marker, color=colour, linestyle="none",
                  label=None if kind in labelled else kind.replace("_", " "))
        labelled.add(kind)
    front = pareto_front([(ms, acc) for _, _, ms, acc in points])
    axes.step([ms for ms, _ in front], [100 * acc for _, acc in front], where="post", color="black", alpha=0.5,
              linewidth=1, label="Pareto front")
    axes.plot([ms for ms, _ in front], [100 * acc for _, acc in front], "o", markersize=12, markerfacecolor="none",
              color="black", alpha=0.5)
    latency_axis(axes, "ONNX Runtime batch-1 latency (ms, median over runs)", "test accuracy under ONNX Runtime (%)",
                 "Accuracy vs deployed latency (Pareto front circled)")
    label_points(axes, [(label, ms, 100 * acc) for _, label, ms, acc in points])
    return save(figure, axes, path)


def plot_acc_by_setting(report: Report, path: Path) -> Path | None:
    """One point per student row (mean ± std over seeds), labelled by its swept values: the picture for
    sweeps over keys other than T (loss=..., dataset.label_noise=...). None when only T/alpha were swept."""
    students = [row for row in report.rows if row.role in ("baseline", "distill")]
    if not students or not set(report.keys) - {"T", "alpha", "seed"}:
        return None
    figure = Figure(figsize=(8, 0.9 + 0.35 * len(students)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for i, row in enumerate(students):
        acc = row.stat("test_acc")
        marker, colour = STYLES[row.role]
        axes.errorbar(100 * acc.mean, i, xerr=100 * (acc.std or 0.0), marker=marker, color=colour, capsize=3)
    axes.set_yticks(range(len(students)))
    axes.set_yticklabels([" ".join(f"{k}={v}" for k, v in row.setting.items()) or row.label() for row in students],
                         fontsize=8)
    axes.invert_yaxis()
    for (model, _), row in teachers(students).items():
        if len({r.mean("teacher", "test_acc") for r in students}) == 1:
            axes.axvline(100 * row.mean("teacher", "test_acc"), color="black", linewidth=1, label=f"teacher {model}")
    axes.set(xlabel="final test accuracy (%)", title="Student accuracy by setting (mean ± std over seeds)")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    write_atomic(path, lambda f: figure.savefig(f, dpi=120, format="png"))  # replaces, never writes through
    return path
