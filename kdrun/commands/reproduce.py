"""`kdrun reproduce ROW [seeds=3] [baseline=true] [KEY=VALUE ...]`: run a published row, compare with the paper.

A row (kdrun/report/published.yaml) is a preset and a method. Its seeds run as one real Hydra sweep,
`kdrun distill -m experiment=E loss=M seed=0,1,2` (and, with `baseline=true`, the hard-label baseline
`kdrun train-student -m experiment=E seed=...`), in `outputs/reproduce/ROW/TIME/`; the table at the end puts
kdrun's numbers beside the published ones. Papers report the best test accuracy over the epochs, so that is
the number compared; the final one and (with the presets' validation split) the one picked on validation stand
beside it. Shorter schedules (`epochs=2`) are allowed and marked in the table: they check the path, not the paper.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import yaml

from kdrun.core.errors import KdrunError
from kdrun.core.files import write_atomic, write_json
from kdrun.report.published import PublishedRow, published_row, published_rows, sources
from kdrun.report.runs import find_runs, load_runs
from kdrun.run.config import config_dir

USAGE = ("usage: kdrun reproduce ROW [seeds=3|seeds=0,1,2] [baseline=true] [KEY=VALUE ...]\n"
         "       kdrun reproduce            (lists the published rows)")
OPTIONS = ("seeds", "baseline")
INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT)
PINNED = ("hydra.sweep.dir", "hydra.run.dir", "experiment", "loss", "seed")  # reproduce sets these itself


def main(argv: list[str]) -> int:
    if not argv:
        show_rows()
        return 0
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    row = published_row(argv[0])
    seeds, baseline, overrides = parse(argv[1:])
    out = Path("outputs") / "reproduce" / row.name / datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    codes = [sweep(["distill", f"experiment={row.experiment}", f"loss={row.method}"], seeds, overrides,
                   out / "distill")]
    if baseline and codes[-1] != INTERRUPTED:
        codes.append(sweep(["train-student", f"experiment={row.experiment}"], seeds,
                           baseline_overrides(overrides), out / "baseline"))
    if codes[-1] == INTERRUPTED:  # Ctrl-C: its line is out; no comparison of a half-run row
        return INTERRUPTED
    result = compare(row, out, seeds)
    if not result["kdrun"][row.method]["runs"]:  # refused or failed before a run finished: its own line said why
        return max(codes) or 1
    show_comparison(result, out)
    if max(codes):
        raise KdrunError(f"not every run finished (exit {max(codes)}); the table holds those that did: {out}")
    return 0


def parse(args: list[str]) -> tuple[list[int], bool, list[str]]:
    """reproduce's own options, and the overrides every run gets."""
    seeds, baseline, overrides = "3", False, []
    for arg in args:
        key, _, value = arg.partition("=")
        if not _ or arg.startswith("-"):
            raise KdrunError(f"'{arg}' is not KEY=VALUE; {USAGE.splitlines()[0]}")
        if key in PINNED:
            raise KdrunError(f"reproduce sets {key} itself (the row's preset, method, seeds and "
                             "outputs/reproduce/ROW/TIME); use seeds=N for the seeds")
        if key == "seeds":
            seeds = value
        elif key == "baseline":
            if value.lower() not in ("true", "false"):
                raise KdrunError(f"baseline={value}: write baseline=true or baseline=false")
            baseline = value.lower() == "true"
        else:
            overrides.append(arg)
    return seed_list(seeds), baseline, overrides


def seed_list(text: str) -> list[int]:
    """`3` -> [0, 1, 2]; `0,5` -> [0, 5]."""
    try:
        seeds = [int(s) for s in text.split(",")] if "," in text else list(range(int(text)))
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise KdrunError(f"seeds={text}: give a count (seeds=3) or distinct seeds >= 0 (seeds=0,1,2)")
    return seeds


def sweep(command: list[str], seeds: list[int], overrides: list[str], sweep_dir: Path) -> int:
    """One real `kdrun <verb> -m ...` over the seeds, in its own process; its exit code."""
    argv = [sys.executable, "-m", "kdrun", command[0], "-m", *command[1:], f"seed={','.join(map(str, seeds))}", *overrides,
            f"hydra.sweep.dir={sweep_dir}"]
    code = wait_for(subprocess.Popen(argv))
    if code == INTERRUPTED:
        print(f"kdrun: interrupted; the runs so far are in {sweep_dir}, and `kdrun {command[0]} resume={sweep_dir}` "
              "continues them", file=sys.stderr, flush=True)
    return code


def wait_for(process: subprocess.Popen) -> int:
    """The sweep's exit code, or INTERRUPTED after a Ctrl-C. The sweep gets the same Ctrl-C (one process group): it
    stops after a step and records its runs, or at once on a second one; either way this waits for it to end."""
    interrupted = False
    while True:
        try:
            code = process.wait()
            return INTERRUPTED if interrupted else code
        except KeyboardInterrupt:
            interrupted = True


def baseline_overrides(overrides: list[str]) -> list[str]:
    """The overrides the hard-label baseline has keys for: not the teacher's, T, alpha or the loss's."""
    from kdrun.run.config import register_schemas
    from kdrun.run.preflight import compose_plain

    register_schemas()
    keys = set(compose_plain("train_student", []))
    return [o for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0].split("/")[0] in keys | {"hydra"}]


def recipe_epochs(row: PublishedRow) -> int:
    """The epochs of the published recipe: the preset's, or the method's per-pair setting where it has one."""
    epochs = 0
    for path in (config_dir() / "experiment" / f"{row.experiment}.yaml",
                 config_dir() / "experiment_loss" / f"{row.name}.yaml"):
        if path.is_file():
            epochs = (yaml.safe_load(path.read_text()) or {}).get("epochs", epochs)
    return epochs


def measured(sweep_dir: Path) -> dict:
    """Mean ± sample std (%) of the finished runs in a sweep dir, with their seeds and epochs."""
    run_dirs, _ = find_runs([sweep_dir]) if sweep_dir.is_dir() else ([], [])
    runs, _ = load_runs(run_dirs)
    summaries = [run.summary for run in runs]

    def stat(values: list[float]) -> dict | None:
        if len(values) != len(summaries) or not values:
            return None
        return {"mean": 100 * statistics.fmean(values),
                "std": 100 * statistics.stdev(values) if len(values) > 1 else None}

    return {"runs": len(summaries), "seeds": sorted(s["seed"] for s in summaries),
            "epochs": sorted({s["epochs"] for s in summaries}),
            "best": stat([s["best_test_acc"] for s in summaries]),
            "final": stat([s["test_acc"] for s in summaries]),
            "at_best_val": stat([s["test_acc_at_best_val"] for s in summaries if "test_acc_at_best_val" in s]),
            "teacher": stat([s["teacher"]["test_acc"] for s in summaries if "teacher" in s])}


def compare(row: PublishedRow, out: Path, seeds: list[int]) -> dict:
    """The comparison, written beside the sweeps as reproduce.json."""
    distill, baseline = measured(out / "distill"), measured(out / "baseline")
    if not distill["runs"]:
        return {"kdrun": {row.method: distill}}
    result = {"row": row.name, "experiment": row.experiment, "method": row.method, "seeds_asked": seeds,
              "recipe_epochs": recipe_epochs(row),
              "published": {k: {"top1": n.value, "source": sources()[n.source]}
                            for k, n in (("teacher", row.teacher), ("student", row.student),
                                         (row.method, row.distilled))},
              "kdrun": {"teacher": distill["teacher"], row.method: distill, "student": baseline if baseline["runs"]
                        else None}}
    write_json(out / "reproduce.json", result)
    return result


def _pct(stat: dict | None) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:.2f}" + (f" ± {stat['std']:.2f}" if stat["std"] is not None else "")


def table_rows(result: dict) -> list[list[str]]:
    """One line per model: published, kdrun's best-epoch test acc, the difference, final, at best val, runs."""
    lines = []
    for key in ("teacher", "student", result["method"]):
        published, ours = result["published"][key]["top1"], result["kdrun"][key]
        best = (ours or {}).get("best") if key != "teacher" else ours
        difference = f"{best['mean'] - published:+.2f}" if best else "-"
        if key == "teacher":
            teacher = f"{best['mean']:.2f}" if best else "-"  # one stored teacher for every seed
            lines.append([key, f"{published:.2f}", teacher, difference, "-", "-", "1 (the store's)" if best else "-"])
            continue
        epochs = ",".join(map(str, ours["epochs"])) if ours else "-"
        short = ours and ours["epochs"] and max(ours["epochs"]) < result["recipe_epochs"]
        runs = f"{ours['runs']} (seeds {','.join(map(str, ours['seeds']))}; {epochs} of {result['recipe_epochs']} epochs" \
               f"{': SHORT' if short else ''})" if ours else "not run (baseline=true runs it)"
        lines.append([key if key != "student" else "student (hard labels)", f"{published:.2f}", _pct(best),
                      difference, _pct((ours or {}).get("final")), _pct((ours or {}).get("at_best_val")), runs])
    return lines


HEADERS = ["model", "published %", "kdrun best-epoch %", "difference (pp)", "kdrun final %", "kdrun at best val %",
           "runs"]


def show_comparison(result: dict, out: Path) -> None:
    from rich.table import Table

    from kdrun.core.console import console

    rows = table_rows(result)
    table = Table(title=f"{result['row']}: published vs kdrun (top-1, mean ± std over seeds)")
    for header in HEADERS:
        table.add_column(header)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    markdown = [f"# {result['row']}", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS),
                *("| " + " | ".join(row) + " |" for row in rows), "",
                *(f"- {k}: {v['source']}" for k, v in result["published"].items())]
    write_atomic(out / "reproduce.md", lambda f: f.write(("\n".join(markdown) + "\n").encode()))
    console.print(f"wrote {out / 'reproduce.md'} and reproduce.json", soft_wrap=True)


def show_rows() -> None:
    """Every published row: the preset, the method and the numbers to reach."""
    from rich.table import Table

    from kdrun.core.console import console

    table = Table(title="published rows: kdrun reproduce ROW")
    for header in ("ROW", "teacher %", "student %", "distilled %", "source"):
        table.add_column(header)
    for row in published_rows().values():
        table.add_row(row.name, f"{row.teacher.value:.2f}", f"{row.student.value:.2f}", f"{row.distilled.value:.2f}",
                      row.distilled.source)
    console.print(table)
