"""The CIFAR-100 experiment presets carry the published recipe and run on fake data."""

import pytest
from conftest import kdrun, run_dirs, summary
from hydra import compose, initialize_config_dir

from kdrun.run.config import config_dir, register_schemas

PRESETS = {"cifar100_resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4"),
           "cifar100_wrn_40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2"),
           "cifar100_wrn_40_2_wrn_40_1": ("wrn_40_2", "wrn_40_1"),
           "cifar100_resnet56_resnet20": ("resnet56", "resnet20"),
           "cifar100_vgg13_vgg8": ("vgg13", "vgg8"),
           "cifar100_vgg13_mobilenetv2": ("vgg13", "mobilenetv2"),
           "cifar100_resnet32x4_shufflenetv1": ("resnet32x4", "shufflenetv1"),
           "cifar100_resnet32x4_shufflenetv2": ("resnet32x4", "shufflenetv2"),
           "cifar100_wrn_40_2_shufflenetv1": ("wrn_40_2", "shufflenetv1"),
           "cifar100_resnet110_resnet20": ("resnet110", "resnet20"), "cifar100_resnet110_resnet32": ("resnet110", "resnet32"),
           "cifar100_resnet50_mobilenetv2": ("resnet50", "mobilenetv2"), "cifar100_resnet50_vgg8": ("resnet50", "vgg8")}
# mdistiller's DKD weight on NCKD per pair (configs/cifar100/dkd/*.yaml; 8 where a file sets none).
DKD_BETA = {"cifar100_resnet32x4_resnet8x4": 8.0, "cifar100_wrn_40_2_wrn_16_2": 6.0, "cifar100_wrn_40_2_wrn_40_1": 6.0,
            "cifar100_resnet56_resnet20": 2.0, "cifar100_vgg13_vgg8": 6.0, "cifar100_vgg13_mobilenetv2": 6.0,
            "cifar100_resnet32x4_shufflenetv1": 8.0, "cifar100_resnet32x4_shufflenetv2": 8.0,
            "cifar100_wrn_40_2_shufflenetv1": 8.0, "cifar100_resnet110_resnet32": 2.0, "cifar100_resnet50_mobilenetv2": 8.0}
# The ReviewKD authors' weight per pair (dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh; mdistiller's
# configs/cifar100/reviewkd.yaml agrees on resnet32x4 -> resnet8x4); vgg13 pairs have none: the default 1.
REVIEWKD_BETA = {"cifar100_resnet32x4_resnet8x4": 5.0, "cifar100_wrn_40_2_wrn_16_2": 5.0, "cifar100_wrn_40_2_wrn_40_1": 5.0,
                 "cifar100_resnet56_resnet20": 0.6, "cifar100_vgg13_vgg8": 1.0, "cifar100_vgg13_mobilenetv2": 1.0,
                 "cifar100_resnet32x4_shufflenetv1": 5.0, "cifar100_resnet32x4_shufflenetv2": 8.0,
                 "cifar100_wrn_40_2_shufflenetv1": 5.0}
LIGHT_STUDENTS = ("mobilenetv2", "shufflenetv1", "shufflenetv2")  # published at lr 0.01


def composed(*overrides: str):
    register_schemas()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("distill", overrides=list(overrides))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_with_the_crd_recipe(preset):
    cfg = composed(f"experiment={preset}")
    assert (cfg.teacher.name, cfg.student.name) == PRESETS[preset]
    assert (cfg.dataset.name, cfg.dataset.augment) == ("cifar100", True)
    assert (cfg.T, cfg.alpha, cfg.epochs, cfg.loss.name) == (4.0, 0.9, 240, "kd")
    for optim, lr in ((cfg.optim, 0.01 if cfg.student.name in LIGHT_STUDENTS else 0.05), (cfg.teacher.train.optim, 0.05)):
        assert (optim.name, optim.lr, optim.momentum, optim.weight_decay, optim.batch_size) == ("sgd", lr, 0.9, 5e-4, 64)
        assert (optim.schedule, list(optim.milestones), optim.gamma) == ("multistep", [150, 180, 210], 0.1)
    assert cfg.teacher.train.epochs == 240


@pytest.mark.parametrize("preset", DKD_BETA)
def test_preset_with_dkd_takes_mdistillers_weights_and_warmup_for_the_pair(preset):
    cfg = composed(f"experiment={preset}", "loss=dkd")
    assert (cfg.loss.name, cfg.T, cfg.loss.alpha, cfg.loss.beta, cfg.loss.warmup) == ("dkd", 4.0, 1.0, DKD_BETA[preset], 20)
    assert composed(f"experiment={preset}", "loss=dkd", "loss.beta=3").loss.beta == 3.0


@pytest.mark.parametrize("preset", REVIEWKD_BETA)
def test_preset_with_reviewkd_takes_the_authors_weight_for_the_pair(preset):
    cfg = composed(f"experiment={preset}", "loss=reviewkd")
    assert (cfg.loss.name, cfg.loss.beta, cfg.loss.warmup, cfg.loss.ce_weight) == ("reviewkd", REVIEWKD_BETA[preset], 20, 1.0)


def test_imagenet_preset_with_reviewkd_takes_mdistillers_weight_and_one_warmup_epoch():
    cfg = composed("experiment=imagenet_resnet34_resnet18", "loss=reviewkd")
    assert (cfg.loss.beta, cfg.loss.warmup, cfg.loss.ce_weight) == (1.0, 1, 1.0)


def test_a_preset_runs_one_tiny_epoch_on_fake_cifar_shaped_data(workdir):
    run = kdrun(workdir, "distill", "experiment=cifar100_resnet56_resnet20", "dataset=fake", "dataset.augment=true",
                "dataset.kwargs.shape=[3,32,32]", "dataset.kwargs.num_classes=100", "dataset.kwargs.num_train=32",
                "dataset.kwargs.num_test=16", "epochs=1", "teacher.train.epochs=1", "progress=false",
                "latency.min_seconds=0.01", "latency.batch_size=4", "threads=1")
    assert run.returncode == 0, run.stderr
    [job] = run_dirs(workdir, "distill")
    s = summary(job)
    assert (s["model"], s["teacher"]["model"], s["T"], s["alpha"]) == ("resnet20", "resnet56", 4.0, 0.9)


def test_imagenet_preset_composes_with_the_published_recipe_and_torchvisions_weights():
    cfg = composed("experiment=imagenet_resnet34_resnet18", "dataset.data_dir=/data/imagenet")
    assert (cfg.teacher.name, cfg.teacher.weights, cfg.teacher.train_if_missing) == ("tv_resnet34", "IMAGENET1K_V1", False)
    assert cfg.student.name == "tv_resnet18"
    assert (cfg.dataset.name, cfg.dataset.augment, cfg.dataset.data_dir) == ("imagenet", True, "/data/imagenet")
    assert (cfg.T, cfg.alpha, cfg.epochs) == (1.0, 0.5, 100)
    optim = cfg.optim
    assert (optim.name, optim.lr, optim.momentum, optim.weight_decay, optim.batch_size) == ("sgd", 0.1, 0.9, 1e-4, 256)
    assert (optim.schedule, list(optim.milestones), optim.gamma) == ("multistep", [30, 60, 90], 0.1)


@pytest.mark.parametrize("command, expected", [
    ("train-student", {"student.name": "resnet20", "dataset.name": "cifar100", "optim.name": "sgd", "epochs": 240,
                       "dataset.val_split": 0.1}),
    ("train-teacher", {"teacher.name": "resnet56", "dataset.name": "cifar100"}),
    ("inspect-teacher", {"teacher.name": "resnet56", "dataset.name": "cifar100"}),
])
def test_every_verb_takes_the_parts_of_a_preset_it_has(tmp_path, command, expected):
    """A distill preset gives train-student its hard-label baseline and the teacher verbs their teacher; the
    user's own overrides still win."""
    from omegaconf import OmegaConf

    result = kdrun(tmp_path, command, "experiment=cifar100_resnet56_resnet20", "seed=7", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    cfg = OmegaConf.create(result.stdout)
    assert {key: OmegaConf.select(cfg, key) for key in expected} == expected
    assert "T" not in cfg and "loss" not in cfg and cfg.seed == 7
