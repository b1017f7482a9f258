"""Grouping runs into a report's rows: one row per setting with its seeds aggregated.

What "swept keys" means here. A sweep's jobs differ only in what the sweep varied, and
Hydra records each job's command-line overrides in `.hydra/overrides.yaml`. The keys named
there (except `hydra.*`) are the candidates, and a key is *swept* when its value differs
between runs of the same command. Values come from each job's resolved `.hydra/config.yaml`
(the override text only where the config has no such key), so `T=1` from one sweep and the
default `T: 4.0` of another compare as numbers, and a key one sweep set while another left
at its default still tells them apart; a config group (`student=mlp`) counts by its option's
`name`. Keys are compared per command: a baseline has no T and a teacher has another recipe,
and that is no sweep. Where any run lacks `.hydra/overrides.yaml` (copied summaries), the
summary fields T, alpha and the teacher's model are compared instead. Model and dataset
always have their own columns, and rows never mix them.

`seed` never separates rows (nor `resume`, which only says where a run continued from): runs
that differ only in their seed form one row, whose final and best-epoch accuracies are the
mean ± sample std over its n seeds. Latency and speedup are medians over those runs. The gain
is over the baseline (`train_student`) trained with the same recipe (dataset, student,
optimiser, epochs; from the summaries' dataset, model and epochs without configs), on final
accuracy: picking the best epoch on the test set flatters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from kdrun.core.errors import KdrunError
from kdrun.report.runs import FIXED, NOT_TRAINING, ROLES, Report, Row, Run, find_runs, load_runs, unfinished_notes

NOT_SWEPT = ("seed", "resume")  # a job resumed in its dir (`resume=`) is the same setting as one that ran through


FALLBACK_KEYS = ("T", "alpha", "teacher")


RECIPE_KEYS = ("dataset", "student", "optim", "epochs")


# --- swept keys and grouping ---------------------------------------------------------------

def canonical(value: Any) -> str | None:
    """One text per value, so 1, 1.0 and "1.0" compare equal; a config group by its name."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict) and "name" in value:
        value = value["name"]
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.12g}"
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def setting_value(run: Run, key: str, use_overrides: bool) -> str | None:
    if not use_overrides:
        if key == "teacher":  # a distill summary's teacher is a dict; its model names it
            return canonical((run.summary.get("teacher") or {}).get("model"))
        return canonical(run.summary.get(key))
    value = None
    if run.config is not None:
        value = OmegaConf.select(run.config, key, default=None, throw_on_resolution_failure=False)
    return canonical(value) if value is not None else run.overrides.get(key)


def swept_settings(runs: list[Run]) -> tuple[list[str], list[dict[str, str]]]:
    """The swept keys (except seed) in the order first typed, and each run's values for its command's keys."""
    use_overrides = all(run.overrides is not None for run in runs)
    settings: list[dict[str, str]] = [{} for _ in runs]
    columns: list[str] = []
    for command in dict.fromkeys(run.summary["command"] for run in runs):
        members = [i for i, run in enumerate(runs) if run.summary["command"] == command]
        candidates = (dict.fromkeys(k for i in members for k in runs[i].overrides) if use_overrides
                      else FALLBACK_KEYS)
        for key in candidates:
            values = {i: setting_value(runs[i], key, use_overrides) for i in members}
            if key not in (*NOT_SWEPT, *FIXED) and len(set(values.values())) > 1:
                columns += [key] if key not in columns else []
                for i, value in values.items():
                    settings[i][key] = "" if value is None else value
    return columns, settings


def sort_key(row: Row) -> tuple:
    def natural(value: str) -> tuple:
        try:
            return (0, float(value), "")
        except ValueError:
            return (1, 0.0, value)

    roles = list(ROLES.values())
    role = roles.index(row.role) if row.role in roles else len(roles)
    return (role, str(row.field("model")), str(row.field("dataset")), [natural(v) for v in row.setting.values()])


def group_runs(runs: list[Run]) -> tuple[list[str], list[Row]]:
    keys, settings = swept_settings(runs)
    groups: dict[tuple, Row] = {}
    for run, setting in zip(runs, settings):
        identity = (run.summary["command"], run.summary["model"], run.summary["dataset"], tuple(setting.items()))
        groups.setdefault(identity, Row(run.summary["command"], setting, [])).runs.append(run)
    rows = sorted(groups.values(), key=sort_key)
    for row in rows:
        row.runs.sort(key=lambda run: (run.summary.get("seed") is None, run.summary.get("seed")))
    return keys, rows


# --- baseline gain -------------------------------------------------------------------------

def recipe(run: Run, from_config: bool) -> str:
    """What a baseline must share with a distilled student: everything but the teacher and the seed."""
    if not from_config:
        return json.dumps([run.summary.get(k) for k in ("dataset", "model", "epochs")])
    fields = {}
    for key in RECIPE_KEYS:
        node = OmegaConf.select(run.config, key, default=None, throw_on_resolution_failure=False)
        fields[key] = OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node
    return json.dumps(fields, sort_keys=True, default=str)


def add_gains(rows: list[Row]) -> list[str]:
    """Set each distill row's gain over its one matching baseline; notes for rows left without one."""
    from_config = all(run.config is not None for row in rows for run in row.runs)
    baselines: dict[str, list[Row]] = {}
    for row in rows:
        if row.role == "baseline":
            baselines.setdefault(recipe(row.runs[0], from_config), []).append(row)
    unmatched = 0
    for row in (r for r in rows if r.role == "distill"):
        matches = baselines.get(recipe(row.runs[0], from_config), [])
        if any(m.command == "train_student" for m in matches):  # a real baseline run wins over loss=ce
            matches = [m for m in matches if m.command == "train_student"]
        if len(matches) == 1:
            row.gain = row.stat("test_acc").mean - matches[0].stat("test_acc").mean
        else:
            unmatched += 1
    if unmatched:
        return [f"no gain for {unmatched} distill row(s): no single baseline with the same recipe; "
                "add one with `kdrun train-student` (same dataset, student, optim, epochs) and pass its dir too"]
    return []


# --- the report -----------------------------------------------------------------------------

def build_report(paths: list[Path]) -> Report:
    run_dirs, unfinished = find_runs(paths)
    where = " ".join(str(p) for p in paths)
    runs, damaged = load_runs(run_dirs)
    problems = damaged + unfinished_notes(unfinished, [p.resolve() for p in paths])
    if not runs:
        found = f" ({'; '.join(problems[:5])})" if problems else ""
        raise KdrunError(f"no finished runs (summary.json) under {where}{found}; "
                         "pass the run or sweep directories that kdrun wrote, e.g. outputs/distill-sweep/<time>")
    skipped = [run for run in runs if run.summary["command"] in NOT_TRAINING]
    runs = [run for run in runs if run.summary["command"] not in NOT_TRAINING]
    if not runs:
        raise KdrunError(f"no training runs under {where}, only {len(skipped)} inspect-teacher run(s); "
                         "pass the run or sweep directories of train-teacher, train-student or distill")
    keys, rows = group_runs(runs)
    notes = add_gains(rows)
    if skipped:
        notes.append(f"left out {len(skipped)} inspect-teacher run(s): they train nothing")
    contended = [row.label() for row in rows if row.contended()]
    if contended:
        notes.append(f"*: latency measured under contention (busy or noisy machine) in {len(contended)} row(s): "
                     "their times and speedups are not comparable; rerun them on a quiet machine")
    for row in rows:
        seeds = row.values("seed")
        if len(set(seeds)) < len(seeds):
            notes.append(f"{row.label()}: {len(seeds)} runs but only {len(set(seeds))} distinct seed(s)")
    return Report(keys, rows, notes + problems)
