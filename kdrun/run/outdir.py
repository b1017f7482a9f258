"""Where a run writes, decided once before Hydra starts: resolved, checked to be this run's alone, pinned.

Hydra resolves `hydra.run.dir` (or `hydra.sweep.dir`) itself when the job starts, and writes
`.hydra/` and the log there before any kdrun code runs. A pattern that resolves through
`${now:...}`, `${oc.env:...}` or a config value onto a finished run, the filesystem root or a
parent of the working directory would be written into. So the path is resolved here first,
checked, and handed to Hydra as a literal: what was checked is where the run writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from kdrun.core.errors import ConfigError, first_line
from kdrun.run.config import config_dir
from kdrun.run.preflight import first_values
from kdrun.run.rundir import MULTIRUN, SUMMARY, holds_run

# A sweep's job sub-directory must differ from job to job: by number, id, its overrides, or every swept key.
JOB_DISTINCT = ("${hydra.job.num}", "${hydra.job.id}", "${hydra.job.override_dirname}")
UNQUOTABLE = ("'", "\\", "$")  # characters a path cannot carry through Hydra's override grammar
# Set by a sweep's resume (kdrun.sweep.resume) for the child that reruns one of its jobs: that job dir, the one
# run dir allowed inside a sweep dir.
SWEEP_JOB = "KDRUN_SWEEP_JOB"


@dataclass(frozen=True)
class OutputDir:
    """The resolved place a run (or sweep) writes, and the Hydra settings that shape it."""

    key: str  # hydra.run.dir or hydra.sweep.dir
    resolved: str  # the path as the pattern resolves, before it is made absolute
    output_subdir: str | None  # Hydra's own files (.hydra) inside each run dir; None: not written
    job_subdir: str  # a sweep job's dir inside the sweep dir, unresolved

    @property
    def path(self) -> Path:
        return Path(self.resolved).expanduser().resolve()

    @property
    def pinned(self) -> str:
        """The override that makes Hydra write exactly here."""
        return f"{self.key}='{self.path}'"


def resolve_output(config_name: str, overrides: list[str], multirun: bool,
                   composed: DictConfig | None = None) -> OutputDir:
    """Resolve where the run (or sweep) would write, from `composed` (the first job's config with Hydra's node, as
    `check_overrides` returns it) or by composing these overrides with Hydra's own config."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        cfg = composed if composed is not None else _compose_with_hydra(config_name, overrides)
        subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False).get("subdir")
        output_subdir, path = OmegaConf.select(cfg, "hydra.output_subdir"), OmegaConf.select(cfg, key)
        OmegaConf.select(cfg, "hydra.job.name")  # Hydra resolves it next, to name the log file
    except Exception as error:  # noqa: BLE001 - ${hydra:...} (set only once Hydra runs), ${oc.env:UNSET}, ...
        raise ConfigError(f"cannot resolve where the run writes ({type(error).__name__}: {first_line(error)}); "
                          f"give {key} as a path (${{now:...}} and ${{oc.env:NAME,default}} work)") from None
    return OutputDir(key, str(path), None if output_subdir is None else str(output_subdir), str(subdir))


def _compose_with_hydra(config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="preflight"):
        return compose(config_name=config_name, overrides=first_values(_overrides(overrides)), return_hydra_config=True)


def _overrides(args: list[str]) -> list[str]:
    """The overrides among command-line arguments (not -m, --cfg job, ...)."""
    return [a for a in args if ("=" in a or a.startswith("~")) and not a.startswith("-")]


def sweeps(args: list[str]) -> dict[str, list[str] | None]:
    """The keys a multirun sweeps and their values (`T=1,2` -> {T: [1, 2]}; None: not a list, e.g. Optuna's)."""
    parsed = OverridesParser.create().parse_overrides(_overrides(args))
    return {o.get_key_element(): _listed(o) for o in parsed if o.is_sweep_override()}


def _listed(override: Any) -> list[str] | None:
    try:
        return list(override.sweep_string_iterator())
    except Exception:  # noqa: BLE001 - interval() sweeps have no list of values
        return None


def check_output(out: OutputDir, overrides: list[str], resuming: bool) -> None:
    """One line naming the path and the way out, for a place that is not this run's alone."""
    target, cwd = out.path, Path.cwd().resolve()
    if target == Path(target.anchor) or target == cwd or target in cwd.parents:
        raise ConfigError(f"{out.key} resolves to {target}, which holds your working directory; "
                          f"pass {out.key}=DIR, a new directory of its own")
    if not Path(out.resolved).expanduser().is_absolute() and ".." in PurePath(os.path.normpath(out.resolved)).parts:
        raise ConfigError(f"{out.key}={out.resolved} leaves the working directory ({target}); "
                          "give it as an absolute path if you mean it, or a directory under this one")
    if any(c in str(target) for c in UNQUOTABLE):
        raise ConfigError(f"{out.key} resolves to {target}; choose a path without quotes, backslashes or '$'")
    _check_inside(out.output_subdir, "hydra.output_subdir", "each run dir", ".hydra")
    if out.key == "hydra.sweep.dir":
        _check_inside(out.job_subdir, "hydra.sweep.subdir", "the sweep dir", "${hydra.job.num}")
        _check_distinct_jobs(out.job_subdir, sweeps(overrides))
    if not resuming:
        check_unused(target, out.key)
        for parent in target.parents:
            if holds_run(parent) or ((parent / MULTIRUN).exists() and os.environ.get(SWEEP_JOB) != str(target)):
                raise ConfigError(f"{out.key} {target} lies inside {parent}, which holds a run or sweep; "
                                  f"pass {out.key}=DIR outside it")


def _check_inside(subdir: str | None, key: str, where: str, default: str) -> None:
    if subdir is not None and (PurePath(subdir).is_absolute() or ".." in PurePath(subdir).parts):
        raise ConfigError(f"{key}={subdir} would write outside {where}; give a relative name inside it, "
                          f"e.g. {key}={default} (the default)")


def _check_distinct_jobs(subdir: str, swept: dict[str, list[str] | None]) -> None:
    """Jobs named by their values differ only if every swept key is in the name and no value repeats."""
    if any(marker in subdir for marker in JOB_DISTINCT):
        return
    named = all(f"${{{key}}}" in subdir for key in swept)
    if named and all(values is not None and len(set(values)) == len(values) for values in swept.values()):
        return
    raise ConfigError(f"hydra.sweep.subdir={subdir} gives several jobs of the sweep one directory, and each would "
                      "overwrite the last; include ${hydra.job.num} (the default)")


def _key(arg: str) -> str:
    """An override's key without its +/++/~ prefix (`++hydra.run.dir=x` -> hydra.run.dir)."""
    return arg.split("=", 1)[0].lstrip("+~")


def check_unused(target: Path, key: str) -> None:
    """A run or sweep dir must not hold a run already: its files would mix with the new ones."""
    if (target / MULTIRUN).exists():
        raise ConfigError(f"{target} already holds a sweep; pass another {key}=DIR, "
                          f"or run its unfinished jobs with resume={target}")
    if holds_run(target):
        finished = (target / SUMMARY).exists()
        hint = "" if finished else f", or continue it with resume={target}"
        raise ConfigError(f"{target} already holds a {'finished ' if finished else ''}run; pass another {key}=DIR{hint}")


def check_writable(target: Path, key: str, create: bool) -> None:
    """Fail before Hydra does (with a traceback) when the run dir cannot be created.

    With `create`, it is made now (Hydra would make it next anyway, and the CLI locks it first): the only
    test that no permission bit or special filesystem (/proc) can fool.
    """
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"cannot create the run directory {target}: {existing} is a file, not a directory; "
                          f"pass {key}=DIR somewhere writable")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create the run directory {target}: {existing} is not writable; "
                          f"pass {key}=DIR somewhere writable, or run from a writable directory")
    if create:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"cannot create the run directory {target} ({error.strerror}); "
                              f"pass {key}=DIR somewhere writable") from None


def pin_output_dir(config_name: str, args: list[str], multirun: bool, create: bool = True,
                   resuming: bool = False, composed: DictConfig | None = None) -> tuple[list[str], Path]:
    """The arguments with the run (or sweep) dir checked and pinned to its resolved path, and that path. The pin
    goes among the other overrides: argparse reads them as one run (`-m A=1 B=2`, `A=1 --cfg job`). `composed`:
    the first job's config with Hydra's node, where the caller has it already (see `resolve_output`)."""
    out = resolve_output(config_name, args, multirun, composed)
    try:
        check_output(out, args, resuming)
        check_writable(out.path, out.key, create)
    except OSError as error:  # a name too long for the filesystem, a path through a file, ...
        raise ConfigError(f"cannot use {out.key}={out.resolved[:80]} ({error.strerror or error}); "
                          f"pass {out.key}=DIR, a shorter path somewhere writable") from None
    kept = [a for a in args if _key(a) != out.key]
    first = next((i for i, a in enumerate(kept) if a in _overrides(kept)), 0)
    return [*kept[:first], out.pinned, *kept[first:]], out.path
