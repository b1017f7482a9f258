"""The job configs of a multirun, each composed by Hydra once, and most of them not composed at all.

Hydra composes every job of a batch twice: its sweeper composes them to validate the batch
(`Sweeper.validate_batch_is_legal`, and throws them away), then the launcher composes each
again to run it; one composition costs ~0.1 s on a quiet 2-core machine, several times that
under load. `JobConfigs` takes over the config loader's `load_sweep_config` for one sweep:

- it keeps every config it returns, and the launcher `take`s each (once) instead of
  composing it again: the validation only composes and discards (nothing changes a kept
  config before the launcher takes it), and the configs jobs are derived from are private
  copies, never handed out;
- a job whose overrides differ from an already composed job's only in plain keys (`T=4`
  instead of `T=2`; not a config group, a Hydra setting, a `+`/`~` or a dict value) is not
  composed: that job's config is copied and Hydra's own override step
  (`ConfigLoaderImpl._apply_overrides_to_config`: the same type checks, the same errors)
  applies the differing values; the two fields Hydra derives from the override list
  (`hydra.overrides.task`, `hydra.job.override_dirname`) are set as Hydra sets them.
  Config groups and the defaults list are untouched by plain keys, so the result is the
  config a composition would give (tests/test_sweep_overhead.py compares them).
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf


def _shape(override: Override) -> tuple:
    return override.key_or_group, override.type, override.package


def _plain(override: Override, choices: Any) -> bool:
    """An override whose value can be assigned into a composed config: a key of it, not a group of the defaults list."""
    return (override.type is OverrideType.CHANGE and override.package is None and not override.is_hydra_override()
            and not override.is_sweep_override() and override.key_or_group not in choices
            and not isinstance(override.value(), dict))


class JobConfigs:
    """Every job config of the sweep with master config `master`, composed at most once, most derived from another."""

    def __init__(self, loader: Any, master: DictConfig) -> None:
        self._compose = loader.load_sweep_config  # Hydra's own
        self._master = master
        self._parser = OverridesParser.create()
        self._templates: list[tuple[list[Override], DictConfig]] = []  # composed by Hydra, never handed out
        self._kept: dict[tuple[str, ...], DictConfig] = {}
        loader.load_sweep_config = self.load_sweep_config  # the sweeper's validation comes through here too

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        """What Hydra's `load_sweep_config` returns, kept for `take`."""
        if master_config is not self._master:
            return self._compose(master_config, sweep_overrides)
        parsed = self._parser.parse_overrides(list(sweep_overrides))
        config = self._derived(parsed)
        if config is None:
            config = self._compose(master_config, list(sweep_overrides))
            self._templates.append((parsed, copy.deepcopy(config)))
        self._kept[tuple(sweep_overrides)] = config
        return config

    def take(self, overrides: list[str]) -> DictConfig:
        """The config of the job with these overrides, for the launcher to run (and modify): each handed out once."""
        if tuple(overrides) not in self._kept:
            self.load_sweep_config(self._master, overrides)
        return self._kept.pop(tuple(overrides))

    def _derived(self, parsed: list[Override]) -> Optional[DictConfig]:
        for template_overrides, template in self._templates:
            changed = _changes(template_overrides, parsed, template.hydra.runtime.choices)
            if changed is not None:
                return _with_overrides(template, changed, parsed, self._master)
        return None


def _changes(template: list[Override], parsed: list[Override], choices: Any) -> Optional[list[Override]]:
    """The overrides in which `parsed` differs from `template`, if they are all plain keys at the same places."""
    if [_shape(o) for o in template] != [_shape(o) for o in parsed]:
        return None
    changed = [new for old, new in zip(template, parsed) if old.input_line != new.input_line]
    return changed if all(_plain(o, choices) for o in changed) else None


def _with_overrides(template: DictConfig, changed: list[Override], parsed: list[Override],
                    master: DictConfig) -> DictConfig:
    """`template` with the `changed` values, as Hydra's `load_configuration` + `load_sweep_config` would make it."""
    config = copy.deepcopy(template)
    ConfigLoaderImpl._apply_overrides_to_config(changed, config)
    task = [o for o in parsed if not o.is_hydra_override()]
    config.hydra.overrides.task = [o.input_line for o in task]
    dirname = config.hydra.job.config.override_dirname
    config.hydra.job.override_dirname = get_overrides_dirname(overrides=task, kv_sep=dirname.kv_sep,
                                                              item_sep=dirname.item_sep,
                                                              exclude_keys=dirname.exclude_keys)
    OmegaConf.copy_cache(from_config=master, to_config=config)
    return config
