"""The CIFAR-100 experiment presets carry the published recipe and run on fake data."""

import pytest
from hydra import compose, initialize_config_dir

from conftest import kdrun, run_dirs, summary
from kdrun.config import config_dir, register_schemas

PRESETS = {"cifar100_resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4"),
           "cifar100_wrn_40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2"),
           "cifar100_wrn_40_2_wrn_40_1": ("wrn_40_2", "wrn_40_1"),
           "cifar100_resnet56_resnet20": ("resnet56", "resnet20"),
           "cifar100_vgg13_vgg8": ("vgg13", "vgg8")}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_with_the_crd_recipe(preset):
    register_schemas()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("distill", overrides=[f"experiment={preset}"])
    assert (cfg.teacher.name, cfg.student.name) == PRESETS[preset]
    assert (cfg.dataset.name, cfg.dataset.augment) == ("cifar100", True)
    assert (cfg.T, cfg.alpha, cfg.epochs) == (4.0, 0.9, 240)
    for optim in (cfg.optim, cfg.teacher.train.optim):
        assert (optim.name, optim.lr, optim.momentum, optim.weight_decay, optim.batch_size) == ("sgd", 0.05, 0.9, 5e-4, 64)
        assert (optim.schedule, list(optim.milestones), optim.gamma) == ("multistep", [150, 180, 210], 0.1)
    assert cfg.teacher.train.epochs == 240


def test_a_preset_runs_one_tiny_epoch_on_fake_cifar_shaped_data(workdir):
    run = kdrun(workdir, "distill", "experiment=cifar100_resnet56_resnet20", "dataset=fake", "dataset.augment=true",
                "dataset.kwargs.shape=[3,32,32]", "dataset.kwargs.num_classes=100", "dataset.kwargs.num_train=32",
                "dataset.kwargs.num_test=16", "epochs=1", "teacher.train.epochs=1", "progress=false",
                "latency.min_seconds=0.01", "latency.batch_size=4", "threads=1")
    assert run.returncode == 0, run.stderr
    [job] = run_dirs(workdir, "distill")
    s = summary(job)
    assert (s["model"], s["teacher"]["model"], s["T"], s["alpha"]) == ("resnet20", "resnet56", 4.0, 0.9)
