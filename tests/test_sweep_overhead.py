"""A sweep's fixed cost: job configs composed at most once (most derived from one composition), a plain-key
sweep checked without composing per value, and a stacked group's student cost measured once and said to be shared."""

import os
import subprocess
import sys

import pytest
from conftest import FAST, HANG_GUARD, run_dirs, summary

import kdrun.run.preflight
from kdrun.core.errors import ConfigError
from kdrun.run.config import register_schemas
from kdrun.run.preflight import check_overrides

register_schemas()

# The CLI, with Hydra's per-job composition (the sweeper's validation and the launcher's) counted.
COUNTING_CLI = """
import atexit, sys
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from kdrun.cli import main
compose, calls = ConfigLoaderImpl.load_sweep_config, []
def counted(self, *args, **kwargs):
    calls.append(1)
    return compose(self, *args, **kwargs)
ConfigLoaderImpl.load_sweep_config = counted
atexit.register(lambda: print(f"job compositions: {len(calls)}"))
raise SystemExit(main())
"""


def _count_compositions(monkeypatch) -> list[list[str]]:
    composed: list[list[str]] = []
    compose = kdrun.run.preflight.compose

    def counted(config_name, overrides, **kwargs):
        composed.append(list(overrides))
        return compose(config_name=config_name, overrides=overrides, **kwargs)

    monkeypatch.setattr(kdrun.run.preflight, "compose", counted)
    return composed


def test_a_plain_key_sweep_is_checked_with_a_constant_number_of_compositions(monkeypatch):
    composed = _count_compositions(monkeypatch)
    check_overrides("distill", ["T=1,2,4,8", "alpha=0.5,0.9", "seed=0,1,2", "epochs=3"])
    assert len(composed) == 2  # the first values (keys checked by it too), and one base for every value of every sweep
    composed.clear()
    check_overrides("distill", ["student=mlp,cnn1d_small", "T=1,2"])
    assert ["student=cnn1d_small"] in composed  # a config group changes the composition: composed per value


@pytest.mark.parametrize("sweep,alone", [
    (["T=1,abc"], ["T=abc"]), (["seed=0,zero"], ["seed=zero"]), (["T=4,0"], ["T=0"]),
    (["optim.lr=0.1,0"], ["optim.lr=0"]), (["epochs=1,2.5"], ["epochs=2.5"]), (["T=1,${nope}"], ["T=${nope}"]),
    (["loss=crd", "loss.negatives=5,many"], ["loss=crd", "loss.negatives=many"]),
])
def test_a_bad_value_in_a_plain_key_sweep_fails_as_the_same_value_alone(sweep, alone):
    errors = []
    for overrides in (sweep, alone):
        with pytest.raises(ConfigError) as caught:
            check_overrides("distill", overrides)
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "\n" not in errors[0]


def test_stacked_sweep_composes_one_job_config_and_shares_the_student_cost(workdir):
    environment = {**os.environ, "KDRUN_TEST": "1"}
    environment.pop("HYDRA_FULL_ERROR", None)
    run = subprocess.run([sys.executable, "-c", COUNTING_CLI, "distill", "-m", "hydra/launcher=stacked", *FAST,
                          "epochs=1", "T=2,4", "seed=0,1"], cwd=workdir, capture_output=True, text=True,
                         env=environment, timeout=HANG_GUARD)
    assert run.returncode == 0, run.stderr
    assert "4 in 1 stacked group(s)" in run.stdout + run.stderr
    assert "job compositions: 1" in run.stdout  # one by Hydra; the others derived from it, each reused by the launcher
    costs = [{k: summary(job)[k] for k in ("params", "flops", "latency")} for job in run_dirs(workdir, "distill-sweep")]
    assert len(costs) == 4 and all(cost == costs[0] for cost in costs)
    assert costs[0]["latency"]["measured"] == "once for its stacked group of 4 jobs"


def _loader_and_master(sweep: list[str]):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode

    from kdrun.run.config import config_dir

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(config_dir())))
    master = loader.load_configuration("distill", ["hydra.job.chdir=false", *sweep], run_mode=RunMode.MULTIRUN)
    return loader, master


def _resolved_task(config) -> dict:
    """The config a job runs with, interpolations resolved (Hydra's own node needs Hydra's resolvers)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return {k: OmegaConf.to_container(config[k], resolve=True) if isinstance(config[k], (DictConfig, ListConfig))
            else config[k] for k in config if k != "hydra"}


def test_job_configs_derived_from_one_composition_equal_hydras_own():
    from omegaconf import OmegaConf

    from kdrun.sweep.jobconfigs import JobConfigs

    sweep = ["T=1,4", "student.kwargs.hidden=[8],[16,16]", "optim.lr=0.001,0.01", "epochs=3", "optim=adamw"]
    loader, master = _loader_and_master(sweep)
    jobs = [[f"T={t}", f"student.kwargs.hidden={h}", f"optim.lr={lr}", "epochs=3", "optim=adamw"]
            for t in (1, 4) for h in ("[8]", "[16,16]") for lr in (0.001, 0.01)]
    compose, composed = loader.load_sweep_config, []
    hydras = [compose(master, job) for job in jobs]
    loader.load_sweep_config = lambda m, o: composed.append(o) or compose(m, o)  # noqa: E731 - Hydra's, counted
    configs = JobConfigs(loader, master)
    for job, expected in zip(jobs, hydras):
        got = configs.take(job)
        assert OmegaConf.to_yaml(got) == OmegaConf.to_yaml(expected)  # the hydra node too, unresolved
        assert _resolved_task(got) == _resolved_task(expected)
        assert OmegaConf.is_struct(got) and got.hydra.job.override_dirname == expected.hydra.job.override_dirname
    assert len(composed) == 1
    sgd = configs.take(["T=1", "student.kwargs.hidden=[8]", "optim.lr=0.001", "epochs=3", "optim=sgd"])
    assert sgd.optim.name == "sgd" and len(composed) == 2  # a config group changed: composed by Hydra
    with pytest.raises(Exception, match="Error merging override T=abc"):  # as Hydra's composition fails
        configs.take(["T=abc", "student.kwargs.hidden=[8]", "optim.lr=0.001", "epochs=3", "optim=adamw"])
