"""Hydra looks for launchers only in the `hydra_plugins` namespace: this registers kdrun's stacked launcher
(`hydra/launcher=stacked`), whose behaviour lives in kdrun.sweep.launcher."""

# No `from __future__ import annotations`: Hydra execs this module outside sys.modules, where dataclass needs real types.

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher

from kdrun.sweep.launcher import StackedSweep


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.kdrun_stacked_launcher.stacked_launcher.StackedLauncher"
    # Most jobs in one stacked model (memory grows with it; on CPU beyond ~32 there is little to gain).
    max_group_size: int = 64
    # Set by `kdrun <command> resume=SWEEP_DIR`: finish the sweep already in hydra.sweep.dir.
    resume: bool = False


class StackedLauncher(StackedSweep, Launcher):
    """The plugin class Hydra instantiates (it must live under hydra_plugins)."""


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="kdrun")
