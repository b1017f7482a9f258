"""`kdrun <command> [overrides]`: pick the command, check the overrides, hand argv to Hydra.

No torch here, so `kdrun --help` and bad-input errors are instant. Every override is
composed and validated before Hydra creates a run directory: a mistake costs one line
on stderr and exit code 2, and leaves nothing behind that looks like a run.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import ExitStack
from dataclasses import dataclass

from kdrun.core.errors import KdrunError
from kdrun.core.files import follow_rank
from kdrun.core.jobenv import under_torchrun
from kdrun.run.failure import fail
from kdrun.run.rundir import HYDRA, MULTIRUN, owned


@dataclass(frozen=True)
class Command:
    """A Hydra command (`config_name` set) or a plain one whose module has `main(argv) -> int`."""

    config_name: str | None
    summary: str
    module: str | None = None


COMMANDS = {
    "train-teacher": Command("train_teacher", "train a teacher, or reuse the stored one for the same recipe"),
    "train-student": Command("train_student", "train the student on hard labels alone (the baseline)"),
    "distill": Command("distill", "distill a student from a teacher (T=..., alpha=...)"),
    "inspect-teacher": Command("inspect_teacher", "what a trained teacher knows: dark knowledge, "
                               "class relationships, calibration (plots + JSON)"),
    "report": Command(None, "summarise finished runs/sweeps: table, CSV, Markdown, plots",
                      module="kdrun.commands.report"),
    "reproduce": Command(None, "run a published row (preset + method) over its seeds; compare with the paper",
                         module="kdrun.commands.reproduce"),
    "export": Command(None, "a finished run's student as ONNX + INT8, checked and timed under ONNX Runtime",
                      module="kdrun.commands.export"),
    "evaluate": Command(None, "score a checkpoint or ONNX file on a dataset: accuracy, per class, confusion, latency",
                        module="kdrun.commands.evaluate"),
}

# Hydra flags that start no run (the overrides are still checked: Hydra would print a traceback for them).
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc")
COMPLETION_FLAGS = ("--shell-completion", "-sc")  # their `install=bash` is no override
HELP_FLAGS = ("--help", "-h")  # answered here (kdrun.run.help); `--hydra-help` stays Hydra's


def usage() -> str:
    lines = ["usage: kdrun <command> [key=value ...] [-m] [--cfg job] [--help]", "", "commands:"]
    lines += [f"  {name:<15} {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += ["", "`kdrun <command> --help` lists a command's keys and config groups."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`kdrun ARGS`; a Ctrl-C before the run's own stop handlers are in place (imports, checks) ends quietly."""
    try:
        return run_command(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("kdrun: interrupted while starting, before any training; nothing finished was written",
              file=sys.stderr, flush=True)
        return 130


# Hydra flags followed by a value that is no override (`--cfg job`, `--info defaults`).
FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--info", "-i", *COMPLETION_FLAGS)


# Hydra flags that would pick another config or replay a pickled one: kdrun picks the config by its command.
REFUSED_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun")


# The flags of Hydra's command line that kdrun passes on.
KNOWN_FLAGS = ("-m", "--multirun", "-r", "--run", "--cfg", "-c", "--resolve", "--package", "-p", "--hydra-help",
               "--version", *INFO_FLAGS)


def check_words(args: list[str]) -> None:
    """A bare word (`kdrun distill epochs 3`) is a KEY=VALUE missing its `=`: say so, not Hydra's grammar."""
    for flag in (a for a in args if a.split("=", 1)[0] in REFUSED_FLAGS):
        raise KdrunError(f"{flag.split('=', 1)[0]} is not for kdrun: the command picks its config (conf/); "
                         "choose presets with experiment=NAME and values with KEY=VALUE")
    for flag in (a for a in args if a.startswith("-") and a.split("=", 1)[0] not in KNOWN_FLAGS):
        raise KdrunError(f"unknown flag '{flag}'; kdrun takes KEY=VALUE overrides and -m, --cfg job, --help")
    for arg in (a for a in args if a.startswith("=")):
        raise KdrunError(f"'{arg}' has no key: write KEY=VALUE, e.g. T{arg}")
    for i, arg in enumerate(args):
        if arg.startswith(("-", "~")) or "=" in arg or (i and args[i - 1] in FLAGS_WITH_VALUE):
            continue
        value = args[i + 1] if i + 1 < len(args) and "=" not in args[i + 1] else "VALUE"
        raise KdrunError(f"'{arg}' is not an override: write KEY=VALUE, e.g. {arg}={value}")


def run_command(argv: list[str]) -> int:
    if hasattr(signal, "SIGPIPE"):  # `kdrun distill --help | head` ends quietly, like any CLI
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        return fail(f"unknown command '{name}'; choose one of: {', '.join(COMMANDS)}")
    command = COMMANDS[name]
    if command.config_name is None:
        return plain_command(command, rest)
    try:
        check_words(rest)
    except KdrunError as error:
        return fail(str(error))

    from kdrun.run.config import config_dir, register_schemas
    from kdrun.run.help import command_help
    from kdrun.run.outdir import pin_output_dir
    from kdrun.run.preflight import check_overrides
    from kdrun.run.presets import expand_presets
    from kdrun.run.resume import is_resume

    register_schemas()
    if under_torchrun():  # rank 0 alone checks, holds and writes the run dir (kdrun.run.rundir)
        follow_rank(int(os.environ.get("RANK", "0")))
    with ExitStack() as held:
        if not any(flag in rest for flag in COMPLETION_FLAGS):
            try:
                resuming = is_resume(rest)
                if resuming:
                    rest = resumed(name, command, rest, held)
                    if isinstance(rest, int):  # a sweep resumed job by job: its exit code
                        return rest
                rest = expand_presets(command.config_name, rest)
                overrides = [a for a in rest if ("=" in a or a.startswith("~")) and not a.startswith("-")]
                first_job = check_overrides(command.config_name, overrides)
                check_flags(rest)
                if any(flag in rest for flag in HELP_FLAGS):
                    print(command_help(command.config_name, overrides))
                    return 0
                if not any(flag in rest for flag in INFO_FLAGS):
                    multirun = any(a in MULTIRUN_FLAGS for a in rest)
                    creating = not any(a in ("--cfg", "-c") for a in rest)
                    rest, where = pin_output_dir(command.config_name, rest, multirun, create=creating,
                                                 resuming=resuming, composed=first_job)
                    if creating:  # held before Hydra writes .hydra/ there: one process per run (or sweep) dir
                        held.enter_context(owned(where))
                    if under_torchrun():
                        from kdrun.run.torchrun import torchrun_overrides  # torch: only under torchrun

                        rest = torchrun_overrides(name, command.config_name, rest, multirun)
            except KdrunError as error:
                return fail(str(error))
        return launch(name, command, config_dir(), rest)


MULTIRUN_FLAGS = ("-m", "--multirun")


def check_flags(rest: list[str]) -> None:
    """Flags Hydra cannot combine with a sweep, as one line instead of its traceback."""
    if any(a in MULTIRUN_FLAGS for a in rest) and any(a in ("--cfg", "-c") for a in rest):
        raise KdrunError("--cfg prints one job's config; drop -m to see it (a sweep's values then one by one)")
    if any(a in MULTIRUN_FLAGS for a in rest) and any(a in INFO_FLAGS and a not in HELP_FLAGS for a in rest):
        raise KdrunError("--info and --shell-completion describe the command, not a sweep; drop -m")
    launcher = next((a for a in rest if a.lstrip("+").startswith("hydra/launcher=")), None)
    runs = not any(a in ("--cfg", "-c", *INFO_FLAGS) for a in rest)  # not only printing a config
    if launcher and runs and not any(a in MULTIRUN_FLAGS for a in rest):  # Hydra would ignore it and run here
        raise KdrunError(f"{launcher} picks how a sweep's jobs run, and this is a single run; add -m "
                         f"(e.g. kdrun <command> -m {launcher} seed=0,1)")


def resumed(name: str, command: Command, rest: list[str], held: ExitStack) -> list[str] | int:
    """`resume=DIR`: the arguments that continue the run or sweep in DIR from where it was started, or the
    exit code of a sweep resumed job by job. A sweep has one resumer at a time (its lock, held in `held`).
    A sweep whose launcher resumes it (stacked, slurm) takes `hydra.launcher.KEY=VALUE` settings too."""
    from kdrun.run.replay import split_consent
    from kdrun.run.resume import extension_epochs, launch_dir, resume_overrides, resume_target
    from kdrun.sweep.resume import (
        is_sweep_dir,
        launcher_resume_overrides,
        resume_sweep,
        resumed_by_its_launcher,
        sweep_jobs,
    )

    rest, consent = split_consent(rest)
    launcher = [a for a in rest if a.startswith("hydra.launcher.")]
    target = resume_target([a for a in rest if a not in launcher])
    if is_sweep_dir(target) and extension_epochs(rest) is not None:
        raise KdrunError(f"epochs=N extends one run, not a sweep ({target}); give one of its job dirs")
    if launcher and not (is_sweep_dir(target) and resumed_by_its_launcher(target)):
        raise KdrunError(f"{launcher[0]}: only a sweep run by a launcher that resumes it (hydra/launcher=slurm or "
                         "stacked) takes launcher settings with resume=; drop it")
    if is_sweep_dir(target):
        sweep_jobs(target, command.config_name, consent)  # a sweep this command cannot resume: its line, no lock file
        held.enter_context(owned(target))
        if not resumed_by_its_launcher(target):
            return resume_sweep(name, command.config_name, target, consent)
        # its own launcher runs it again: a stacked sweep's groups train stacked again, a SLURM sweep goes to SLURM
        rest = launcher_resume_overrides(command.config_name, target, consent, launcher)
        hydra_file = target / MULTIRUN
    else:
        rest, hydra_file = resume_overrides(command.config_name, rest, consent), target / HYDRA / "hydra.yaml"
    os.chdir(launch_dir(hydra_file))  # relative paths in its config mean what they did
    return rest


def plain_command(command: Command, rest: list[str]) -> int:
    """Commands that take paths, not overrides (e.g. `kdrun report PATH...`)."""
    import importlib

    try:
        return importlib.import_module(command.module).main(rest)
    except KdrunError as error:
        return fail(str(error))


def launch(name: str, command: Command, conf: object, rest: list[str]) -> int:
    """Run Hydra's own main with this command's config; results go to files, not returns."""
    import hydra

    from kdrun.run.task import run_task

    sys.argv = [f"kdrun {name}", *rest]
    hydra.main(config_path=str(conf), config_name=command.config_name, version_base="1.3")(run_task)()
    return 0
