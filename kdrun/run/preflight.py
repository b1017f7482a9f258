"""Compose and validate a command's overrides before any job starts.

Hydra reports a bad override as several lines (or a traceback) and only once a run
directory exists; a sweep may fail in its tenth job. Here every override, and every value
of a sweep, is composed with Hydra's compose API and checked by `kdrun.run.validate`, and the
first problem becomes a `KdrunError` whose message names the key and what is allowed. A
sweep over a plain key (T, seed, optim.lr) is checked by one composition and Hydra's
override step applied to a copy of it per value: the same checks, at a fraction of the cost.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from kdrun.core.errors import ConfigError
from kdrun.core.jobenv import available_memory
from kdrun.run.config import config_dir
from kdrun.run.validate import validate

_MISSING = object()


def group_options(conf: Path) -> dict[str, list[str]]:
    """Config groups under conf/ (dataset, teacher, ...) and the option names in each."""
    return {
        group.name: sorted(p.stem for p in group.glob("*.yaml"))
        for group in sorted(conf.iterdir())
        if group.is_dir() and group.name != "hydra"
    }


def _parse(overrides: list[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise ConfigError(f"cannot parse overrides: {str(error).splitlines()[0]}") from None
    except ValueError as error:  # Python's limit on the digits of an integer
        raise ConfigError(f"cannot parse overrides: {str(error).split(';')[0]}; use a smaller number") from None


def _values(override: Override) -> list[str] | None:
    """Every value a (sweep) override takes, as override text; None where it cannot be listed."""
    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    try:
        return list(override.sweep_string_iterator())
    except Exception:  # interval() sweeps (Optuna) have no finite list of values
        return None


def _check_group(override: Override, options: dict[str, list[str]]) -> None:
    group = override.key_or_group
    for value in _values(override) or []:
        if value not in options[group]:
            raise ConfigError(f"unknown {group} '{value}'; choose one of: {', '.join(options[group])}")


def _check_key(cfg: DictConfig, key: str) -> None:
    if OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:
        return
    parent = key
    while parent:  # the deepest part of the key that exists, whose keys are the valid choices
        parent = parent.rpartition(".")[0]
        node = OmegaConf.select(cfg, parent, default=_MISSING) if parent else cfg
        if node is not _MISSING:
            break
    valid = ", ".join(str(k) for k in node.keys()) if isinstance(node, DictConfig) else "none"
    where = f" under '{parent}'" if parent else ""
    raise ConfigError(f"unknown key '{key}' for this command; valid keys{where}: {valid}")


def _free_form(cfg: DictConfig, key: str) -> bool:
    """Whether `key` sits in a free-form dict (a model's or dataset's `kwargs`) rather than in the schema."""
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(cfg, parent, default=_MISSING) if parent else cfg
    return isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict


def _check_add_or_delete(cfg: DictConfig, override: Override) -> None:
    """`+KEY=`/`++KEY=` may add keys only to a kwargs dict; `~KEY` may remove only such keys: the schema's
    keys are what every run reads."""
    key = override.key_or_group
    if override.is_delete() and not _free_form(cfg, key):
        raise ConfigError(f"cannot remove '{key}' (~{key}): every run needs it; set a value instead, e.g. {key}=...")
    if override.is_add() or override.is_force_add():
        if not _free_form(cfg, key):
            _check_key(cfg, key)


def _check_hydra_override(override: Override) -> None:
    """The Hydra settings kdrun users type: the launcher and its number of parallel jobs."""
    key = override.key_or_group
    if key == "hydra.mode":
        raise ConfigError("hydra.mode is kdrun's to set; start a sweep with -m (--multirun), a single run without it")
    if key == "hydra/launcher":
        from hydra.core.global_hydra import GlobalHydra

        options = GlobalHydra.instance().config_loader().get_group_options("hydra/launcher")
        for value in _values(override) or []:
            if value not in options:
                raise ConfigError(f"unknown hydra/launcher '{value}'; choose one of: {', '.join(sorted(options))} "
                                  "(joblib and submitit need: pip install 'kdrun[sweep]')")
    if key == "hydra.launcher.n_jobs":
        value = override.get_value_element_as_str()
        if value.lstrip("-").isdigit() and int(value) == 0:
            raise ConfigError("hydra.launcher.n_jobs must be >= 1, or negative for all cores but |n|-1 (got 0); "
                              "try hydra.launcher.n_jobs=2")


def _check_sweep_not_empty(override: Override) -> None:
    if override.is_sweep_override() and _values(override) == []:
        raise ConfigError(f"the sweep over {override.get_key_element()} has no values ({override.input_line}); "
                          f"give at least one, e.g. {override.get_key_element()}=1,2")


@contextmanager
def _as_config_error(overrides: list[str]) -> Iterator[None]:
    """Hydra's and OmegaConf's errors while composing `overrides`, as one-line ConfigErrors."""
    try:
        yield
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(_one_line(error)) from None
    except (OverflowError, ValueError) as error:  # a 400-digit number for a float key; Python's digit limit
        if not isinstance(error, OverflowError) and "digits" not in str(error):
            raise ConfigError(f"cannot compose the config: {str(error).splitlines()[0]}") from None
        huge = [o.split("=", 1)[0] for o in overrides if len(o.split("=", 1)[-1]) > 308]
        raise ConfigError(f"{huge[0] if huge else 'a value'} is too large ({str(error).splitlines()[0]}); "
                          "use a value below 1e308") from None


def _check(cfg: DictConfig) -> None:
    validate(cfg)
    if "loss" in cfg:
        from kdrun.methods.pairs import check_pair  # torch-free: model names alone
        from kdrun.methods.params import parse_params  # torch-free: the methods' options alone

        _check_memory(parse_params(cfg.loss, cfg.get("alpha")), cfg.optim.batch_size, cfg.loss.name)
        check_pair(cfg.loss.name, cfg.teacher.name, cfg.student.name)


def _check_memory(params: object, batch: int, method: str) -> None:
    """A method whose relation matrices grow as batch^2 or batch^3 (rkd) is refused, before any run, a batch
    this machine's memory cannot hold: the kernel would kill the run without a word."""
    needed = getattr(params, "relation_bytes", lambda b: 0)(batch)
    available = available_memory()
    if available is not None and needed > available:
        raise ConfigError(f"loss={method} at optim.batch_size={batch} needs about {needed / 2**30:.0f} GiB for its "
                          f"relation matrices, more than the {available / 2**30:.0f} GiB available; lower "
                          "optim.batch_size")


def _compose(config_name: str, overrides: list[str], check: bool = True, resolve: bool = True) -> DictConfig:
    with _as_config_error(overrides):
        cfg = compose(config_name=config_name, overrides=overrides)
        if resolve:
            OmegaConf.resolve(cfg)
    if check:
        _check(cfg)
    return cfg


def _plain_key(override: Override, groups: list[Override]) -> bool:
    """A `KEY=VALUE` override of a key in the config (T, optim.lr), not of a config group (student=...)."""
    return override.type is OverrideType.CHANGE and override not in groups and override.package is None


def _check_assigned(base: DictConfig, line: str) -> None:
    """What composing with one more plain-key override `line` would check, without composing again: Hydra's own
    override step applied to a copy of the composed `base` (the schema type-checks the value), then `validate`."""
    cfg = copy.deepcopy(base)
    with _as_config_error([line]):
        ConfigLoaderImpl._apply_overrides_to_config(_parse([line]), cfg)
        OmegaConf.resolve(cfg)
    _check(cfg)


def _one_line(error: Exception) -> str:
    """The most specific line of a Hydra/OmegaConf error, prefixed by the key it concerns."""
    cause = error.__cause__ or error
    key = getattr(cause, "full_key", None)
    text = next((line.strip() for line in str(cause).splitlines() if line.strip()), str(cause))
    return f"invalid value for {key}: {text}" if key else text


def _first(override: Override) -> str:
    """The override with its first value only: enough to know which keys exist."""
    values = _values(override)
    return f"{override.get_key_element()}={values[0]}" if values else ""


def first_values(overrides: list[str]) -> list[str]:
    """The overrides with each sweep cut to its first value: one job's, enough to resolve shared settings."""
    return [_first(o) if o.is_sweep_override() else o.input_line for o in _parse(overrides) if _first(o)]


def _check_keys(config_name: str, groups: list[Override], keys: list[Override],
                adds_or_deletes: list[Override]) -> None:
    """Each key against the config its groups compose to (a `+KEY=`/`~KEY` needs this before the full composition:
    once applied, the key would exist); run only where needed, as it costs a composition of its own."""
    skeleton = _compose(config_name, [_first(o) for o in groups if _first(o)], check=False)
    for override in keys:
        _check_key(skeleton, override.key_or_group)
    for override in adds_or_deletes:
        _check_add_or_delete(skeleton, override)


def _compose_first_job(config_name: str, overrides: list[str]) -> DictConfig:
    """The first job's config with Hydra's node, unresolved, once its task part is resolved and checked: one
    composition serves the checks and, after them, where the run writes (kdrun.run.outdir)."""
    with _as_config_error(overrides):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        task = copy.deepcopy(cfg)
        with open_dict(task):
            del task["hydra"]
        OmegaConf.resolve(task)
    _check(task)
    return cfg


def check_overrides(config_name: str, overrides: list[str]) -> DictConfig:
    """Raise ConfigError for the first override (or sweep value) no run could use; else return the first job's
    config, Hydra's node included and unresolved (`kdrun.run.outdir.pin_output_dir` reads where it writes)."""
    conf = config_dir()
    options = group_options(conf)
    everything = _parse(overrides)
    parsed = [o for o in everything if not o.is_hydra_override()]
    for override in parsed:
        _check_sweep_not_empty(override)
    groups = [o for o in parsed if o.key_or_group in options and o.package is None]
    keys = [o for o in parsed if o not in groups and o.type is OverrideType.CHANGE]
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    for override in (o for o in groups if o.is_delete()):
        raise ConfigError(f"cannot remove the config group '{override.key_or_group}' (~{override.key_or_group}); "
                          f"pick another option instead, e.g. {override.key_or_group}={options[override.key_or_group][0]}")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3", job_name="preflight"):
        for override in (o for o in everything if o.is_hydra_override()):
            _check_hydra_override(override)
        for override in groups:
            _check_group(override, options)
        adds_or_deletes = [o for o in parsed if o not in groups and o.type is not OverrideType.CHANGE]
        if adds_or_deletes:
            _check_keys(config_name, groups, keys, adds_or_deletes)
        try:
            first_job = _compose_first_job(config_name, first_values(overrides))
        except ConfigError:
            _check_keys(config_name, groups, keys, [])  # an unknown key, named with the valid ones, comes first
            raise
        base = None  # composed once, for every value of every plain-key sweep (a sweep over T, seed, optim.lr)
        for override in (o for o in parsed if o.is_sweep_override()):
            for value in _values(override) or []:
                line = f"{override.get_key_element()}={value}"
                if _plain_key(override, groups):
                    if base is None:
                        base = _compose(config_name, fixed, check=False, resolve=False)
                    _check_assigned(base, line)
                else:
                    _compose(config_name, fixed + [line])
    return first_job


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """The config these overrides compose to, Hydra's node included (inside an initialised config dir)."""
    task = [o.input_line for o in _parse(overrides) if not o.is_hydra_override()]
    with _as_config_error(overrides):
        return compose(config_name=config_name, overrides=task, return_hydra_config=True)


def compose_plain(config_name: str, overrides: list[str]) -> dict:
    """The config these overrides compose to, as plain data (what Hydra saves as .hydra/config.yaml)."""
    task = [o.input_line for o in _parse(overrides) if not o.is_hydra_override()]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="preflight"):
        return OmegaConf.to_container(_compose(config_name, task, check=False))
