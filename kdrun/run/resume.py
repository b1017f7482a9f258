"""`kdrun <command> resume=RUN_DIR`: continue an interrupted run in its own directory.

Before Hydra starts, the run dir is checked (a kdrun run of this command, not finished,
with a `last.pt`), and the command line is rebuilt from the run's own saved overrides plus
`resume=RUN_DIR hydra.run.dir=RUN_DIR`: the run continues with the config it started with,
in the directory it started in. The composed config is compared with the saved
`.hydra/config.yaml`, so a run whose config files changed since is refused rather than
silently continued with other settings. No torch here: this runs in the CLI.

`resume=RUN_DIR epochs=N` trains a finished (or interrupted) student on to N epochs from its
`last.pt`; the engine stretches a cosine schedule to the new length (kdrun.train.recipe) and
summary.json records the extension.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from kdrun.core.errors import KdrunError, first_line
from kdrun.methods.params import DEFAULT_ALPHA
from kdrun.run.presets import override_text
from kdrun.run.replay import Consent, check_replayable
from kdrun.run.rundir import HYDRA, LAST, SUMMARY, check_not_in_use, saved_config, saved_overrides


def cli_name(command: str) -> str:
    """`train_student` -> `train-student`, the word users type."""
    return command.replace("_", "-")


def resume_command(command: str, run_dir: object, processes: int = 1) -> str:
    """How to continue a run; one saved by several processes continues on as many (torchrun, one node)."""
    launcher = f"torchrun --nproc_per_node={processes} -m kdrun" if processes > 1 else "kdrun"
    return f"{launcher} {cli_name(command)} resume={run_dir}"


def is_resume(args: list[str]) -> bool:
    return any(a.startswith("resume=") for a in args)


def launch_dir(hydra_file: Path) -> Path:
    """The directory a run (or sweep) was started from, as Hydra recorded it: relative paths in its
    config (teacher store, data dir) mean what they meant then, whatever the current directory now.

    Only a directory the run (or sweep) dir lies in is believed: a run dir is data, and an edited one must not
    send a resumed run's relative paths into someone else's directory. Else the current directory."""
    try:
        cwd = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd", default=None)
    except Exception:  # noqa: BLE001 - a damaged file: keep the current directory
        cwd = None
    run_dir = hydra_file.resolve().parent
    run_dir = run_dir.parent if run_dir.name == HYDRA else run_dir
    if cwd and Path(cwd).is_dir() and Path(cwd).resolve() in run_dir.parents:
        return Path(cwd)
    return Path.cwd()


EXTENDABLE = ("train_student", "distill")  # commands whose finished runs `epochs=N` extends


def extension_epochs(args: list[str]) -> int | None:
    """`epochs=N` given with resume=RUN_DIR: continue the run to N epochs (None: resume as it was)."""
    given = [a.split("=", 1)[1] for a in args if a.startswith("epochs=")]
    if not given:
        return None
    if len(given) > 1 or not given[0].isdigit() or int(given[0]) < 1:
        raise KdrunError(f"resume=RUN_DIR epochs=N takes one whole number of epochs (got {', '.join(given)})")
    return int(given[0])


def resume_target(args: list[str]) -> Path:
    chosen = [a for a in args if a.startswith("resume=")]
    others = [a for a in args if not a.startswith(("resume=", "epochs="))]
    if len(chosen) > 1 or others:
        raise KdrunError(f"resume=RUN_DIR takes no other arguments but epochs=N, trust_code=true and the code it "
                         f"names (got {' '.join(others or chosen)}); the run continues with its own saved config")
    value = chosen[0].split("=", 1)[1]
    if not value:
        raise KdrunError("resume= needs the run directory, e.g. resume=outputs/distill/<time>")
    return Path(value).expanduser().resolve()


def check_run_dir(run_dir: Path, config_name: str, epochs: int | None = None) -> dict[str, Any]:
    """The run's saved config, or a one-line error saying why this dir cannot be resumed (or, with `epochs`,
    extended to that many epochs)."""
    saved = run_dir / HYDRA / "config.yaml"
    if not saved.is_file():
        raise KdrunError(f"{run_dir} is not a kdrun run directory (no .hydra/config.yaml); pass the directory "
                         "of the interrupted run, e.g. resume=outputs/distill/<time>")
    try:  # train-teacher: epochs: ${teacher...}; an older run's ${oc.env:...} may no longer resolve
        config = OmegaConf.to_container(OmegaConf.load(saved_config(run_dir)), resolve=True)
    except Exception as error:  # noqa: BLE001 - YAML or an interpolation that cannot resolve today
        raise KdrunError(f"{run_dir}'s saved config cannot be read ({type(error).__name__}: {first_line(error)}); "
                         "it cannot be resumed exactly, start the run again") from None
    command = config.get("command") if isinstance(config, dict) else None
    if command != config_name:
        raise KdrunError(f"{run_dir} is a '{command}' run, not '{config_name}'; resume it with "
                         f"`{resume_command(str(command), run_dir)}`")
    if epochs is not None:
        check_extension(run_dir, config, epochs)
    elif (run_dir / SUMMARY).exists():
        raise KdrunError(f"{run_dir} already finished (it has {SUMMARY}); nothing to resume: add epochs=N to train "
                         "it on to N epochs, or start a new run")
    check_not_in_use(run_dir)
    if not (run_dir / LAST).is_file() and (run_dir / SUMMARY).exists():
        raise KdrunError(f"{run_dir} kept no {LAST} when it finished (keep_last=false), so it cannot be continued "
                         f"exactly; start a new run from its weights: kdrun {cli_name(command)} "
                         f"student.init={run_dir / 'checkpoint.pt'} epochs=N")
    if not (run_dir / LAST).is_file():
        raise KdrunError(f"{run_dir} has no {LAST}, so there is nothing to resume (it stopped before its first "
                         "checkpoint, or ran with checkpoint_every=0); start the run again")
    return config


def check_extension(run_dir: Path, config: dict[str, Any], epochs: int) -> None:
    """`epochs=N` trains a run on beyond the epochs it had: only for a student's training, and only longer."""
    if config["command"] not in EXTENDABLE:
        raise KdrunError(f"epochs=N with resume= extends {' and '.join(map(cli_name, EXTENDABLE))} runs, not "
                         f"{cli_name(config['command'])}; train a new one with epochs={epochs}")
    if epochs <= config["epochs"]:
        raise KdrunError(f"{run_dir} has {config['epochs']} epochs; epochs={epochs} would not extend it (give more "
                         f"than {config['epochs']})")


def differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs. A key only `now` has is a setting a
    newer kdrun added (e.g. checkpoint_min_seconds): the saved run never had it, so it is no change."""
    if isinstance(saved, dict) and isinstance(now, dict):
        keys = sorted(set(saved), key=str)
        return [d for k in keys for d in differences(saved[k], now.get(k), f"{prefix}{k}.")]
    return [] if saved == now else [prefix.rstrip(".")]


def resume_overrides(config_name: str, args: list[str], consent: Consent = Consent()) -> list[str]:
    """The overrides that relaunch the run in `resume=` with its own config and directory; code it names
    is replayed only with the user's consent (kdrun.run.replay)."""
    from kdrun.run.preflight import compose_plain

    run_dir, epochs = resume_target(args), extension_epochs(args)
    saved = check_run_dir(run_dir, config_name, epochs)
    overrides_file = run_dir / HYDRA / "overrides.yaml"
    original = as_resolved([o for o in saved_overrides(overrides_file) if not o.startswith("resume=")], saved)
    check_replayable(run_dir, original, consent)
    check_same_config(run_dir, saved, compose_plain(config_name, original))
    if epochs is not None:  # the saved epochs= gives way to the longer run's
        original = [*(o for o in original if not o.startswith("epochs=")), f"epochs={epochs}"]
    return [*original, f"resume={run_dir}", f"hydra.run.dir={run_dir}"]


def as_resolved(overrides: list[str], saved: dict[str, Any]) -> list[str]:
    """The overrides with each interpolated value (`${now:...}`, `${oc.env:...}`) replaced by the value the run
    resolved it to: the run continues with what it started with, whatever the clock or environment says now."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config, pinned = OmegaConf.create(saved), []
    for override in OverridesParser.create().parse_overrides(overrides):
        value = OmegaConf.select(config, override.key_or_group, default=None)
        literal = "${" in override.input_line and override.package is None and isinstance(value, (str, int, float))
        pinned.append(f"{override.key_or_group}={override_text(value)}" if literal else override.input_line)
    return pinned


# Keys that do not change what a run trains: how its speed is measured at the end, and whether bars are drawn.
# A resumed run takes this kdrun's values for them (an upgrade may change their defaults).
NOT_TRAINING = ("resume", "latency", "progress")


# Keys whose default became null (unset) in a later kdrun, and the value unset means: a run saved with that
# value resumes as if it had been saved unset (alpha: 0.9 before explicit loss weights existed).
UNSET_MEANS = {"alpha": DEFAULT_ALPHA}


def check_same_config(run_dir: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """A run continues only with the training config it started with: refuse it if that differs."""
    now = {**now, **{k: v for k, v in UNSET_MEANS.items() if k in now and now[k] is None and saved.get(k) == v}}
    changed = differences({k: v for k, v in saved.items() if k not in NOT_TRAINING},
                          {k: v for k, v in now.items() if k not in NOT_TRAINING})
    if changed:
        raise KdrunError(f"{run_dir}'s overrides no longer give its saved config (differs in: {', '.join(changed[:5])}); "
                         "the config files changed since the run, so it cannot be resumed exactly")
