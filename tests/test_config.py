"""Every bad input is caught before a run starts, with a message that names the key."""

import pytest

from kdrun.core.errors import ConfigError
from kdrun.run.config import register_schemas
from kdrun.run.preflight import check_overrides

register_schemas()


@pytest.mark.parametrize("overrides,expected", [
    (["T=0"], "T must be > 0"),
    (["T=-2"], "T must be > 0"),
    (["T=abc"], "invalid value for T"),
    (["alpha=1.5"], "alpha must be in [0, 1]"),
    (["alpha=-0.1"], "alpha must be in [0, 1]"),
    (["epochs=0"], "epochs must be >= 1"),
    (["device=gpu"], "device must be auto, cpu, cuda, cuda:N or mps"),
    (["foo=1"], "unknown key 'foo'"),
    (["optim.momentom=0.9"], "unknown key 'optim.momentom'"),
    (["dataset=nope"], "unknown dataset 'nope'; choose one of: "),
    (["teacher=nope"], "unknown teacher 'nope'; choose one of: "),
    (["student=nope"], "unknown student 'nope'; choose one of: "),
    (["optim.lr=0"], "optim.lr must be > 0"),
    (["T=1,-1"], "T must be > 0"),
    (["T=1,2", "alpha=0.5,7"], "alpha must be in [0, 1]"),
    (["seed=zero"], "invalid value for seed"),
    (["alpha=0.5", "loss.ce_weight=0.1", "loss.kd_weight=9"], "alpha=0.5 and loss.ce_weight/loss.kd_weight both"),
    (["loss=ls", "alpha=0.5,0.9", "loss.ce_weight=0.1", "loss.kd_weight=9"], "alpha=0.5 and loss.ce_weight/loss.kd_weight"),
    (["loss.kd_weight=9"], "loss.ce_weight and loss.kd_weight are set together"),
    (["loss.ce_weight=-0.1", "loss.kd_weight=9"], "loss.ce_weight must be >= 0"),
    (["loss=mlkd", "loss.kd_weight=-1"], "loss.kd_weight must be >= 0"),
])
def test_bad_distill_overrides_name_the_key(overrides, expected):
    with pytest.raises(ConfigError) as caught:
        check_overrides("distill", overrides)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_group_lists_the_valid_names():
    with pytest.raises(ConfigError, match="mnist1d"):
        check_overrides("distill", ["dataset=cifar1000"])


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(ConfigError, match=r"valid keys: .*\bT\b.*\balpha\b"):
        check_overrides("distill", ["temperature=4"])


def test_sweeping_a_key_the_command_lacks_fails_before_any_job():
    with pytest.raises(ConfigError, match="unknown key 'T'"):
        check_overrides("train_teacher", ["T=1,2"])


@pytest.mark.parametrize("overrides", [["T=2", "alpha=0"], ["T=1,2,4,8"], ["alpha=0,1", "seed=0,1"],
                                       ["dataset=fake", "epochs=3"], ["device=cpu"], ["device=cuda:1"],
                                       ["hydra.job.chdir=false"], ["loss.ce_weight=0.1", "loss.kd_weight=9", "T=2"],
                                       ["loss=kd_pt", "loss.ce_weight=0", "loss.kd_weight=1,9"]])
def test_good_overrides_pass(overrides):
    check_overrides("distill", overrides)
