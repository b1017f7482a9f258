"""Hydra looks for launchers only in the `hydra_plugins` namespace: this registers `hydra/launcher=kdrun_slurm`
(what conf/hydra/launcher/slurm.yaml extends), whose behaviour lives in kdrun.sweep.slurm. Without Hydra's
submitit launcher (the `sweep` extra) it registers nothing, and kdrun's preflight names the extra to install."""

# No `from __future__ import annotations`: Hydra execs this module outside sys.modules, where dataclass needs real types.

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

try:
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    from kdrun.sweep.slurm import SlurmSweep
except ImportError:  # no kdrun[sweep]
    SlurmQueueConf = None

if SlurmQueueConf is not None:

    @dataclass
    class KdrunSlurmConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.kdrun_slurm_launcher.slurm_launcher.KdrunSlurmLauncher"
        # Ctrl-C while the sweep waits: cancel its jobs (false: leave them running, report them later).
        cancel_on_interrupt: bool = True
        # A job pending this long for a reason that waiting does not resolve (PartitionConfig, ReqNodeNotAvail,
        # PartitionDown, ...) ends the wait: the sweep's jobs are cancelled and one line says why.
        hopeless_pending_s: int = 60
        # Set by `kdrun <command> resume=SWEEP_DIR`: submit the unfinished jobs of the sweep in hydra.sweep.dir.
        resume: bool = False

    class KdrunSlurmLauncher(SlurmSweep):
        """The plugin class Hydra instantiates (it must live under hydra_plugins)."""

    ConfigStore.instance().store(group="hydra/launcher", name="kdrun_slurm", node=KdrunSlurmConf, provider="kdrun")
