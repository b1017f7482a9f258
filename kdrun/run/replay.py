"""A run directory is data, not code: what `resume=` may replay from it without the user's word.

`resume=DIR` relaunches a run (or a sweep's jobs) with the overrides saved in `DIR`. A run dir
can come from anyone (a colleague's tarball, a shared disk), and some overrides name code:
`teacher.target=module:function` is imported and called, Hydra callbacks and logging
factories are instantiated, a SLURM launcher's `setup` lines run in a shell. Such an override
is replayed only when the user gives it again on the command line, or says `trust_code=true`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

from kdrun.core.errors import KdrunError

TRUST = "trust_code=true"
# Hydra settings a run dir may replay: its launcher and sweeper by name, and their values. Where a resumed run
# writes is the run dir itself, never a path or mode it names (kdrun.run.outdir pins it).
SAFE_HYDRA = ("hydra.job.chdir", "hydra/launcher", "hydra/sweeper", "hydra/job_logging", "hydra/hydra_logging")
WHERE = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.mode", "hydra.output_subdir")
SAFE_HYDRA_PREFIXES = ("hydra.launcher.", "hydra.sweeper.")
# ... except a launcher's or sweeper's settings that run code: shell lines, extra sbatch/srun arguments, a class.
CODE_SETTINGS = ("setup", "srun_args", "additional_parameters", "python", "_target_", "target")


def names_place(override: Override) -> bool:
    """Whether this override says where (or in which mode) Hydra writes: a replay never takes that from a run dir."""
    return override.key_or_group in WHERE


def names_code(override: Override) -> bool:
    """Whether this override makes kdrun or Hydra import, call or run something it names."""
    key = override.key_or_group
    leaf = key.rsplit(".", 1)[-1].rsplit("/", 1)[-1]
    if leaf in CODE_SETTINGS:
        return True
    if not (key.startswith("hydra.") or key.startswith("hydra/")):
        return False
    return key not in SAFE_HYDRA and not key.startswith(SAFE_HYDRA_PREFIXES)


@dataclass(frozen=True)
class Consent:
    """What the user said about code, next to `resume=`: overrides given again, or trust in everything."""

    given: tuple[str, ...] = ()
    trusted: bool = False

    @property
    def args(self) -> list[str]:
        """The same consent, for a child `kdrun ... resume=JOB_DIR` of a sweep's resume."""
        return [*self.given, *([TRUST] if self.trusted else [])]


def split_consent(args: list[str]) -> tuple[list[str], Consent]:
    """`resume=`'s arguments, and the user's consent to code: `trust_code=...` and overrides that name code."""
    values = [a.split("=", 1)[1].lower() for a in args if a.startswith("trust_code=")]
    if any(v not in ("true", "false") for v in values):
        raise KdrunError(f"trust_code takes true or false (got {values[-1]})")
    rest = [a for a in args if not a.startswith("trust_code=")]
    candidates = [a for a in rest if "=" in a and not a.startswith(("-", "resume="))]
    given = [o.input_line for o in OverridesParser.create().parse_overrides(candidates) if names_code(o)]
    return [a for a in rest if a not in given], Consent(tuple(given), bool(values) and values[-1] == "true")


def check_replayable(source: Path, saved: list[str], consent: Consent) -> None:
    """Refuse, in one line, to replay an override from `source` that names code the user did not give again."""
    parsed = OverridesParser.create().parse_overrides(saved)
    placed = [o.input_line for o in parsed if names_place(o)]
    if placed:
        raise KdrunError(f"{source} names where its run writes ({', '.join(placed[:3])}); a run dir is data and a "
                         "resume writes only into it: the file was edited, start the run again instead")
    if consent.trusted:
        return
    foreign = [o.input_line for o in parsed if names_code(o) and o.input_line not in consent.given]
    if foreign:
        raise KdrunError(f"{source} asks to run code it names itself ({', '.join(foreign[:3])}); a run dir is data: "
                         f"give {foreign[0]} again on the command line, or add {TRUST} if you trust where it came from")
