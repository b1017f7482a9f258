"""The CIFAR model zoo and the torchvision adapter: shapes, parameter counts, the peers' state_dict
layout, named stages, a training step, errors."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf
from torch import nn

from kdrun.core.errors import KdrunError
from kdrun.models import build_model, count_params
from kdrun.models.checkpoint import renamed_sequential_keys
from kdrun.models.stages import EMBEDDING, classifier, stage_names, tap
from kdrun.run.config import ModelConfig, TeacherConfig, config_dir

CIFAR = (3, 32, 32)

# Millions of parameters for 100 classes as the CRD paper (Tian et al. 2020) and the
# RepDistiller/mdistiller READMEs give them; None: counted from the architecture below.
PUBLISHED = {
    "resnet8": 0.08, "resnet14": 0.18, "resnet20": 0.28, "resnet32": 0.47, "resnet44": 0.67, "resnet56": 0.86,
    "resnet110": 1.74, "resnet8x4": 1.23, "resnet32x4": 7.43,
    "wrn_16_1": 0.18, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.26,
    "vgg8": 3.96, "vgg11": None, "vgg13": 9.46, "vgg16": None, "vgg19": None,
    "mobilenetv2": 0.81, "shufflenetv1": 0.95, "shufflenetv2": 1.36,
    "resnet50": None,  # RepDistiller's resnetv2.py ResNet50: no published count; its frozen state_dict below holds
}
ZOO = list(PUBLISHED)
VGG_CONVS = {"vgg8": (1, 1, 1, 1, 1), "vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3),
             "vgg19": (2, 2, 4, 4, 4)}
CRD_RECIPE = {"epochs": 240, "seed": 0, "optim": {
    "name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "multistep",
    "milestones": [150, 180, 210], "gamma": 0.1, "batch_size": 64}}


pytestmark = pytest.mark.usefixtures("one_thread")


def peer_state_dicts() -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Frozen from RepDistiller's models/ (mdistiller's models/cifar/ give the same list), 100 classes:
    `<kdrun name> <state_dict key> <shape>` per line, in the order the peers' state_dict lists them."""
    frozen: dict[str, list] = defaultdict(list)
    for line in (Path(__file__).parent / "data" / "peer_zoo_state_dicts.txt").read_text().splitlines():
        name, key, shape = line.split()
        frozen[name].append((key, tuple(int(n) for n in shape.split("x")) if shape != "-" else ()))
    return frozen


PEER_STATE_DICTS = peer_state_dicts()


def vgg_params(convs_per_block: tuple[int, ...], classes: int = 100) -> int:
    """3x3 convolutions with biases, batch-norm scale and shift, and a 512-input linear classifier."""
    total, cin = 0, 3
    for width, convs in zip((64, 128, 256, 512, 512), convs_per_block):
        for _ in range(convs):
            total, cin = total + cin * width * 9 + width + 2 * width, width
    return total + 512 * classes + classes


@pytest.mark.parametrize("name", ZOO)
def test_parameter_count_matches_the_published_one(name):
    params = count_params(build_model(name, 100, CIFAR, {}))
    if name in VGG_CONVS:
        assert params == vgg_params(VGG_CONVS[name])
    if PUBLISHED[name] is not None:
        # Published to two decimals (+-5000), which is 6% of resnet8; otherwise within 1.5%.
        assert abs(params - PUBLISHED[name] * 1e6) <= max(0.015 * PUBLISHED[name] * 1e6, 5000)


@pytest.mark.parametrize("name", ZOO)
def test_forward_shape_and_one_sgd_step_that_moves_every_weight(name):
    torch.manual_seed(0)
    model = build_model(name, 100, CIFAR, {})
    images, labels = torch.randn(2, *CIFAR), torch.tensor([3, 97])
    with torch.no_grad():
        assert model.eval()(images).shape == (2, 100)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model.train()(images), labels)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.isfinite(loss)
    unchanged = [n for (n, p), old in zip(model.named_parameters(), before) if torch.equal(p, old)]
    assert not unchanged, f"parameters outside the computation: {unchanged}"


@pytest.mark.parametrize("name", ZOO)
def test_the_peers_state_dict_loads_strictly_with_their_key_names_and_shapes(name):
    model = build_model(name, 100, CIFAR, {})
    assert [(key, tuple(value.shape)) for key, value in model.state_dict().items()] == PEER_STATE_DICTS[name]
    torch.manual_seed(0)
    peer = {key: torch.randn(shape) if shape else torch.tensor(7) for key, shape in PEER_STATE_DICTS[name]}
    model.load_state_dict(peer, strict=True)
    assert torch.equal(model.state_dict()[PEER_STATE_DICTS[name][0][0]], peer[PEER_STATE_DICTS[name][0][0]])


@pytest.mark.parametrize("name, std, bias_zero", [("wrn_40_2", None, True), ("vgg13", 0.01, True),
                                                  ("mobilenetv2", 0.01, True), ("resnet8", None, False)])
def test_the_final_linear_layer_is_initialised_as_the_peers_do(name, std, bias_zero):
    torch.manual_seed(0)
    fc = classifier(build_model(name, 100, CIFAR, {}))
    assert bool((fc.bias == 0).all()) == bias_zero
    default_std = 1 / (3 * fc.in_features) ** 0.5  # PyTorch's kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in))
    assert fc.weight.std().item() == pytest.approx(std or default_std, rel=0.05)


# resnet8 as kdrun wrote it before the zoo took the peers' names (nn.Sequential indices).
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
OLD_RESNET8_KEYS = (["0.0.weight", *(f"0.1.{k}" for k in BN)]
                    + [key for block, shortcut in ((1, False), (2, True), (3, True))
                       for unit in (["body.0", "body.1"] + (["shortcut"] if shortcut else []))
                       for key in (f"{block}.{unit}.0.weight", *(f"{block}.{unit}.1.{k}" for k in BN))]
                    + ["4.2.weight", "4.2.bias"])


def test_a_checkpoint_of_the_earlier_sequential_zoo_is_renamed_by_position():
    torch.manual_seed(0)
    model = build_model("resnet8", 10, CIFAR, {}).eval()
    old = dict(zip(OLD_RESNET8_KEYS, model.state_dict().values()))
    assert len(old) == len(model.state_dict()) == 56
    fresh = build_model("resnet8", 10, CIFAR, {}).eval()
    fresh.load_state_dict(renamed_sequential_keys(fresh, old))
    images = torch.randn(2, *CIFAR)
    assert torch.equal(fresh(images), model(images))
    shuffled = dict(reversed(list(old.items())))  # shapes no longer match in order: left alone, strict load says why
    assert renamed_sequential_keys(fresh, shuffled) is shuffled


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2",
                                  "tv_resnet18"])
def test_named_stages_shallow_to_deep_and_the_embedding(name):
    model = build_model(name, 10, CIFAR, {}).eval()
    names = stage_names(model)
    assert names[0] == "stem" and names[-1] == EMBEDDING and len(names) >= 5
    with torch.no_grad(), tap(model, names) as features:
        logits = model(torch.randn(2, *CIFAR))
    sides = [features[n].shape[-1] for n in names[:-1]]
    assert sides == sorted(sides, reverse=True) and sides[-1] < 32
    assert features[EMBEDDING].shape == (2, classifier(model).in_features)
    assert torch.allclose(classifier(model)(features[EMBEDDING]), logits)


def test_other_torchvision_families_name_their_classifier():
    model = build_model("tv_mobilenet_v3_small", 10, CIFAR, {})
    assert model.classifier_module == "classifier.3" and stage_names(model) == [EMBEDDING]


def test_zoo_models_take_other_class_counts_and_channels():
    model = build_model("resnet8", 10, (1, 28, 28), {})
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet20", "tv_resnet18"])
def test_image_models_refuse_non_image_inputs_in_one_line(name):
    with pytest.raises(KdrunError, match=r"needs images shaped \(channels, height, width\)") as error:
        build_model(name, 10, (1, 40), {})
    assert "\n" not in str(error.value)


def test_tv_resnet18_gets_the_cifar_stem():
    model = build_model("tv_resnet18", 10, CIFAR, {})
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(2, *CIFAR)).shape == (2, 10)
    # The only difference from torchvision's own: a 3x3 instead of a 7x7 first convolution.
    reference = torchvision.models.resnet18(num_classes=10)
    assert count_params(model) == count_params(reference) - 64 * 3 * (49 - 9)


def test_tv_keeps_the_imagenet_stem_for_large_inputs():
    model = build_model("tv_resnet18", 10, (3, 224, 224), {})
    assert (model.conv1.kernel_size, model.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(model.maxpool, nn.MaxPool2d)


def test_tv_adapts_other_families_and_grayscale_inputs():
    model = build_model("tv_mobilenet_v3_small", 7, (1, 28, 28), {})
    stem = model.features[0][0]
    assert (stem.in_channels, stem.stride) == (1, (1, 1))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_tv_passes_options_to_torchvision_and_rejects_unknown_ones():
    model = build_model("tv_mobilenet_v2", 10, CIFAR, {"width_mult": 0.5})
    assert model.classifier[-1].in_features == 1280  # the last conv keeps 1280 channels below width 1
    with pytest.raises(KdrunError, match="tv_resnet18.*unexpected keyword argument 'depth'"):
        build_model("tv_resnet18", 10, CIFAR, {"depth": 3})


def test_tv_refuses_a_net_too_deep_for_the_input_in_one_line():
    with pytest.raises(KdrunError, match=r"tv_inception_v3 cannot take inputs shaped \(3, 32, 32\)") as error:
        build_model("tv_inception_v3", 10, CIFAR, {})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["tv_resnet19", "resnet21"])
def test_unknown_model_is_one_line_listing_the_options(name):
    with pytest.raises(KdrunError) as error:
        build_model(name, 10, CIFAR, {})
    message = str(error.value)
    assert message.startswith(f"unknown model '{name}'; choose one of: ") and "\n" not in message
    assert "resnet20" in message and "wrn_40_2" in message
    if name.startswith("tv_"):
        assert "tv_resnet18" in message


def test_torchvision_is_imported_only_for_tv_names():
    code = ("import sys\nfrom kdrun.core.errors import KdrunError\nfrom kdrun.models import build_model\n"
            "try:\n    build_model('resnet21', 10, (3, 32, 32), {})\nexcept KdrunError as error:\n    print(error)\n"
            "print('torchvision' in sys.modules)\n")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    message, imported = output.splitlines()
    assert "tv_<name> (any torchvision.models classifier)" in message
    assert imported == "False"


def test_configs_name_every_zoo_model_and_teachers_carry_the_crd_recipe():
    students = {p.stem: p for p in (config_dir() / "student").glob("*.yaml")}
    assert set(ZOO) <= set(students)
    for name in ZOO:
        config = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(students[name]))
        assert (config.name, dict(config.kwargs)) == (name, {})
    for name in ("resnet32x4", "wrn_40_2", "resnet56", "vgg13", "resnet110", "resnet50"):
        path = config_dir() / "teacher" / f"{name}.yaml"
        teacher = OmegaConf.merge(OmegaConf.structured(TeacherConfig), OmegaConf.load(path))
        assert teacher.name == name
        recipe = {**CRD_RECIPE, "label_smoothing": 0.0, "optim": {**CRD_RECIPE["optim"], "nesterov": False}}
        assert OmegaConf.to_container(teacher.train) == recipe
