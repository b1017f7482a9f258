"""Any teacher, any student: timm families' feature taps, each model's own view of the stream, methods across
a tiny ViT and a tiny ResNet (random init, small images, no network), the pre-check and its refusals."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from kdrun.core.errors import ConfigError, KdrunError
from kdrun.data import load_dataset
from kdrun.methods.base import Batch, MethodContext, build_method
from kdrun.methods.pairs import check_pair, methods_for
from kdrun.models import build_model, build_viewed
from kdrun.models.stages import tap
from kdrun.models.views import resolve_view, view_of
from kdrun.teachers.knowledge import teacher_stats
from kdrun.train.engine import TeacherTargets, student_step
from tests.conftest import kdrun, run_dirs, summary

VIT = "timm_vit_tiny_patch16_224"
DEIT = "timm_deit_tiny_distilled_patch16_224"
TINY_VIT = {"patch_size": 4, "depth": 4, "embed_dim": 32, "num_heads": 2}  # 4 blocks: stages 1-4
RESNET = "resnet8"
STREAM = (3, 16, 16)
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (conftest.py)


def _data():
    return load_dataset("fake", "/unused", False, False, {"shape": list(STREAM), "num_train": 32, "num_test": 8})


def _model(name, side, mean=None):
    """`name` built for its own view: `side` pixels, and a renormalisation when `mean` is given."""
    view = OmegaConf.create({"size": side, "mean": mean, "std": None if mean is None else [0.25] * 3})
    kwargs = TINY_VIT if name in (VIT, DEIT) else {}
    return build_viewed(name, 10, STREAM, None, kwargs, view)


# --- taps: named like CNN stages in every family -------------------------------------------------------

def test_timm_families_name_their_stages_and_give_maps():
    x = torch.randn(2, 3, 32, 32)
    families = {
        VIT: (TINY_VIT, {"stage1": (2, 32, 8, 8), "stage4": (2, 32, 8, 8), "cls": (2, 32)}),
        "timm_swin_tiny_patch4_window7_224": ({"window_size": 2, "embed_dim": 8, "depths": (1, 1, 1, 1),
                                              "num_heads": (1, 1, 1, 1)},
                                             {"stage1": (2, 8, 8, 8), "stage4": (2, 64, 1, 1)}),
        "timm_convnext_atto": ({"dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1)},
                               {"stage1": (2, 8, 8, 8), "stage4": (2, 64, 1, 1)}),
    }
    for name, (kwargs, expected) in families.items():
        model = build_model(name, 10, (3, 32, 32), kwargs)
        assert list(model.stage_modules) == ["stage1", "stage2", "stage3", "stage4"], name
        with tap(model, [*expected, "embedding"]) as features:
            model(x)
        assert {k: tuple(features[k].shape) for k in expected} == expected, name
    vit = build_model(VIT, 10, (3, 32, 32), TINY_VIT)
    with tap(vit, ["stage4", "cls"]) as features:
        vit(x)
    tokens = {}
    vit.blocks[3].register_forward_hook(lambda m, a, out: tokens.setdefault("out", out))
    vit(x)
    # the map is the patch tokens on the 8x8 grid (prefix CLS token dropped), the CLS token the final norm's first
    assert torch.equal(features["stage4"], tokens["out"][:, 1:].transpose(1, 2).reshape(2, 32, 8, 8))
    assert torch.equal(features["cls"], vit.norm(tokens["out"])[:, 0])


# --- views: one stream, each model its own size and normalisation --------------------------------------

def test_each_model_sees_its_own_size_and_normalisation():
    teacher, student = _model(VIT, 32, mean=[0.5, 0.5, 0.5]), _model(RESNET, None)
    seen = {}
    teacher.patch_embed.register_forward_pre_hook(lambda m, a: seen.setdefault("teacher", a[0]))
    student.conv1.register_forward_pre_hook(lambda m, a: seen.setdefault("student", a[0]))
    x = torch.randn(4, *STREAM)
    teacher(x), student(x)
    assert seen["student"].shape[-2:] == (16, 16) and torch.equal(seen["student"], x)
    assert seen["teacher"].shape[-2:] == (32, 32)
    resized = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(seen["teacher"], (resized - 0.5) / 0.25)  # the stream as (0, 1), renormalised
    assert view_of(teacher).describe(STREAM)["input_shape"] == [3, 32, 32]
    assert view_of(student).describe(STREAM)["input_shape"] == [3, 16, 16]


def test_a_view_maps_from_the_streams_normalisation_and_defaults_to_the_pretrained_config():
    cifar = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    view = resolve_view({"size": None, "mean": [0.5] * 3, "std": [0.5] * 3}, (3, 32, 32), cifar)
    x = torch.randn(2, 3, 32, 32)
    raw = x * torch.tensor(cifar[1]).view(1, 3, 1, 1) + torch.tensor(cifar[0]).view(1, 3, 1, 1)
    torch.testing.assert_close(view(None, (x,))[0], (raw - 0.5) / 0.5)
    vit = build_model(VIT, 10, (3, 32, 32), TINY_VIT)  # its pretrained_cfg: 224 px, mean/std 0.5
    pretrained = resolve_view(None, (3, 32, 32), cifar, vit.pretrained_cfg)
    assert (pretrained.size, pretrained.mean, pretrained.source) == ((224, 224), (0.5, 0.5, 0.5), "pretrained")


# --- methods across families ----------------------------------------------------------------------------

@pytest.mark.parametrize("teacher_name,student_name", [(VIT, RESNET), (RESNET, VIT)], ids=["vit-to-cnn", "cnn-to-vit"])
def test_every_method_the_precheck_allows_trains_across_vit_and_resnet(teacher_name, student_name):
    torch.manual_seed(0)
    data = _data()
    teacher = _model(teacher_name, 32 if teacher_name == VIT else None)  # the ViT at 32 px, the ResNet at 16
    student = _model(student_name, 32 if student_name == VIT else None)
    x, y, index = data.x_train[:16], data.y_train[:16], torch.arange(16)
    stats = teacher_stats(teacher.eval()(data.x_train).detach(), data.y_train, 4.0, 10)
    allowed = methods_for(teacher_name, student_name)
    assert {"kd", "dkd", "fitnet", "ofa", "rkd", "crd"} <= set(allowed) and "at" not in allowed
    for name in allowed:
        params = {"name": name, **({"negatives": 8} if name == "crd" else {})}
        method = build_method(params, MethodContext(4.0, 0.9, 10, 32, student, teacher, x[:2], data.y_train, stats))
        student.zero_grad(set_to_none=True)
        logits, features = student_step(student, student, method.student_stages, x, CPU)
        t_logits, t_features = TeacherTargets(teacher, data, stages=method.teacher_stages)(index, x)
        parts = method(Batch(logits, y, t_logits, index, features, t_features))
        assert all(torch.isfinite(p) for p in parts), name
        parts.total.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), name
        for part, p in method.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: {part} got no gradient"
        if name in ("fitnet", "ofa"):
            assert any(True for _ in method.parameters()), f"{name}: a projector between the families"


@pytest.mark.parametrize("variant", ["hard", "soft"])
def test_deit_distils_a_resnet_into_a_vit_through_its_distillation_token(variant):
    torch.manual_seed(0)
    data = _data()
    teacher, student = _model(RESNET, None), _model(DEIT, 32)
    x, y = data.x_train[:16], data.y_train[:16]
    method = build_method({"name": "deit", "variant": variant}, MethodContext(2.0, None, 10, 32, student, teacher, x[:2]))
    logits, features = student_step(student, student, method.student_stages, x, CPU)
    torch.testing.assert_close(logits, (features["cls_logits"] + features["dist_logits"]) / 2)  # DeiT's prediction
    t_logits = teacher.eval()(x).detach()
    parts = method(Batch(logits, y, t_logits, None, features))
    expected_kd = (torch.nn.functional.cross_entropy(features["dist_logits"], t_logits.argmax(1)) if variant == "hard"
                   else torch.nn.functional.kl_div(torch.log_softmax(features["dist_logits"] / 2, 1),
                                                   torch.softmax(t_logits / 2, 1), reduction="sum") * 4 / (16 * 10))
    torch.testing.assert_close(parts.kd, 0.5 * expected_kd)
    parts.total.backward()
    assert student.head_dist.weight.grad.abs().sum() > 0 and student.head.weight.grad.abs().sum() > 0


# --- the pre-check and bad input: one line each ----------------------------------------------------------

def test_the_precheck_refuses_a_method_a_pair_cannot_use_and_names_those_it_can():
    for method in ("at", "reviewkd"):
        with pytest.raises(ConfigError) as error:
            check_pair(method, VIT, RESNET)
        message = str(error.value)
        assert f"loss={method} cannot distil teacher {VIT} (vit) into student {RESNET} (cnn)" in message
        assert "ofa" in message and "fitnet" in message and "kd" in message and "at," not in message
        assert "\n" not in message
    check_pair("at", "resnet32x4", RESNET)  # one family: allowed
    with pytest.raises(ConfigError, match="distillation token"):
        check_pair("deit", RESNET, VIT)
    check_pair("deit", RESNET, DEIT)


def test_bad_input_is_one_line():
    with pytest.raises(KdrunError, match=r"unknown model 'timm_vit_tinny_patch16_224'.*closest: timm_vit_tiny"):
        build_model("timm_vit_tinny_patch16_224", 10, STREAM, {})
    with pytest.raises(KdrunError, match=r"needs images shaped \(channels, height, width\)"):  # a ViT on 1-D data
        build_viewed(VIT, 10, (1, 40), None, TINY_VIT, None)
    with pytest.raises(KdrunError, match=r"a view resizes and normalises images.*\(1, 40\)"):
        build_viewed("cnn1d", 10, (1, 40), None, {}, {"size": 32})
    with pytest.raises(KdrunError, match="need 3 values each"):
        resolve_view({"mean": [0.5], "std": [0.5]}, STREAM, None)


def test_a_teacher_whose_classes_differ_from_the_students_is_one_line(tmp_path):
    import timm
    from safetensors.torch import save_file

    from kdrun.models.timm_models import pretrained_timm

    published = timm.create_model("vit_tiny_patch16_224", num_classes=1000, img_size=16, **TINY_VIT)
    save_file(published.state_dict(), tmp_path / "model.safetensors")  # a weights file, loaded offline
    with pytest.raises(KdrunError, match="timm_vit_tiny_patch16_224 predicts 1000 classes but the dataset has 10"):
        pretrained_timm("vit_tiny_patch16_224", str(tmp_path / "model.safetensors"), 10, STREAM,
                        {"img_size": 16, **TINY_VIT})


# --- through the CLI --------------------------------------------------------------------------------------

FAST = ["dataset=fake", "dataset.kwargs.shape=[3,16,16]", "dataset.kwargs.num_train=32", "dataset.kwargs.num_test=16",
        "epochs=1", "teacher.train.epochs=1", "progress=false", "threads=1", "latency.min_seconds=0.01",
        "latency.min_reps=3", "latency.batch_size=8", "probe=false"]


def test_cnn_to_vit_through_the_cli_with_a_feature_method_and_each_models_view(workdir):
    vit = [f"student.kwargs.{k}={v}" for k, v in TINY_VIT.items()]
    result = kdrun(workdir, "distill", *FAST, "teacher=resnet56", "teacher.name=resnet8", "student=timm",
                   f"student.name={VIT}", *(f"+{v}" for v in vit), "student.view.size=32", "loss=fitnet")
    assert result.returncode == 0, result.stderr[-2000:]
    s = summary(run_dirs(workdir, "distill")[0])
    assert s["view"]["input_shape"] == [3, 32, 32] and s["teacher"]["view"]["input_shape"] == [3, 16, 16]
    assert s["hint"]["shared_space"] is True and s["test_acc"] >= 0


def test_the_cli_refuses_a_method_the_pair_cannot_use_before_any_run(workdir):
    result = kdrun(workdir, "distill", *FAST, "teacher=timm", f"teacher.name={VIT}", "student=resnet8", "loss=at")
    assert result.returncode != 0 and not (workdir / "outputs").exists()
    assert result.stderr.strip().count("\n") == 0 and f"loss=at cannot distil teacher {VIT} (vit)" in result.stderr


def test_published_weights_from_a_file_see_their_pretrained_view(tmp_path):
    import timm
    from safetensors.torch import save_file

    from kdrun.models import view_pretrained
    from kdrun.models.timm_models import pretrained_timm

    kwargs = {"img_size": 24, **TINY_VIT}
    save_file(timm.create_model("vit_tiny_patch16_224", **kwargs).state_dict(), tmp_path / "model.safetensors")
    model, path = pretrained_timm("vit_tiny_patch16_224", str(tmp_path / "model.safetensors"), 1000, STREAM, kwargs)
    view = view_of(view_pretrained(model, STREAM, ((0.4,) * 3, (0.2,) * 3), None))
    # timm's pretrained config for this ViT: mean/std 0.5; the side it was built for: 24 (not the stream's 16)
    assert (view.size, view.mean, view.std, view.source) == ((24, 24), (0.5,) * 3, (0.5,) * 3, "pretrained")
    assert model(torch.randn(2, *STREAM)).shape == (2, 1000) and path == tmp_path / "model.safetensors"
