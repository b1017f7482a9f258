"""The student leaves kdrun: ONNX export round trips, INT8 accuracy, the deploy block, and their bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST, kdrun, run_dirs
from torch import nn

from kdrun.cli import main as cli
from kdrun.core.errors import KdrunError
from kdrun.data import load_dataset
from kdrun.deploy.bundle import DeploySettings, deploy
from kdrun.deploy.export import metadata_of, to_onnx
from kdrun.deploy.runtime import Session, check_input_shape, max_abs_difference
from kdrun.measure.latency import Protocol
from kdrun.models import build_model

QUICK = Protocol(batch_size=32, warmup=1, min_reps=3, min_seconds=0.0, max_seconds=0.2)


def exported(tmp_path, model, shape, name="model.onnx", metadata=None):
    path = tmp_path / name
    path.write_bytes(to_onnx(model, shape, metadata or {"role": "student", "class_names": ["a", "b"]}))
    return Session(path)


@pytest.mark.parametrize("arch, shape, kwargs", [  # the MNIST-1D CNN: in the INT8 test below
    ("mlp", (1, 40), {"hidden": [32, 32]}),
    ("resnet8x4", (3, 32, 32), {}),
    ("timm_test_resnet", (3, 32, 32), {}),  # timm's smallest real architecture (kdrun[timm])
])
def test_export_round_trip_matches_pytorch(tmp_path, arch, shape, kwargs):
    torch.manual_seed(0)
    model = build_model(arch, 10, shape, kwargs).eval()
    session = exported(tmp_path, model, shape)
    inputs = torch.randn(5, *shape)  # another batch size than the exporter's sample: the batch is dynamic
    assert max_abs_difference(model, session, inputs) <= 1e-4
    assert session.logits(inputs).shape == (5, 10)
    assert metadata_of(session.path) == {"role": "student", "class_names": ["a", "b"]}


def test_an_op_the_exporter_cannot_convert_is_one_line_naming_op_and_module(tmp_path):
    class Cholesky(nn.Module):
        def forward(self, x):
            return torch.linalg.cholesky(x @ x.transpose(-1, -2) + torch.eye(x.shape[-1]))

    model = nn.Sequential(nn.Linear(4, 4), Cholesky())
    with pytest.raises(KdrunError) as caught:
        to_onnx(model, (4, 4), {})
    message = str(caught.value)
    assert "\n" not in message and "linalg_cholesky" in message and "'1' (Cholesky)" in message


def test_an_onnx_file_whose_input_does_not_fit_the_dataset_is_one_line(tmp_path):
    session = exported(tmp_path, build_model("mlp", 10, (1, 40), {"hidden": [8]}), (1, 40))
    check_input_shape(session.path, session.input_shape, (1, 40), "mnist1d")
    with pytest.raises(KdrunError, match=r"takes inputs of shape \[batch, 1, 40\] but dataset 'cifar10' gives "
                                         r"\[batch, 3, 32, 32\]"):
        check_input_shape(session.path, session.input_shape, (3, 32, 32), "cifar10")


INT8_MAX_DROP = 0.02  # the stated bound: INT8 costs a trained MNIST-1D CNN at most 2 points of test accuracy


def test_int8_of_a_trained_mnist1d_student_keeps_its_accuracy(tmp_path, one_thread):
    torch.manual_seed(0)
    data = load_dataset("mnist1d", "~/.cache/kdrun/data", False, False, {})  # generated once, then cached
    student = build_model("cnn1d", 10, (1, 40), {"channels": 8})
    optimiser = torch.optim.AdamW(student.parameters(), 1e-2)
    for _ in range(300):
        batch = torch.randint(0, data.train_size, (128,))
        loss = nn.functional.cross_entropy(student(data.x_train[batch]), data.y_train[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    block = deploy(tmp_path, student, "cnn1d", data, DeploySettings(QUICK, calibration_batches=4))
    fp32, int8 = block["models"]["student_fp32"], block["models"]["student_int8"]
    assert fp32["test_acc"] > 0.6  # trained: the bound below means something
    assert fp32["max_abs_diff_vs_torch"] <= 1e-4
    assert fp32["test_acc"] - int8["test_acc"] <= INT8_MAX_DROP
    assert int8["bytes"] < fp32["bytes"] and int8["quantization"]["calibration_examples"] == 4 * 32
    assert block["speedup_over"] == "student_fp32" and "student_int8" in block["speedups"]
    assert json.loads((tmp_path / "export" / "deploy.json").read_text()) == json.loads(json.dumps(block))
    metadata = metadata_of(tmp_path / "export" / "student.onnx")
    assert metadata["class_names"] == [str(i) for i in range(10)] and metadata["normalisation"]["mean"] is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no staging folder left


def test_a_failed_export_leaves_the_previous_export_untouched(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "student.onnx").write_bytes(b"earlier")
    data = load_dataset("fake", str(tmp_path), False, False, {"shape": [4, 4]})
    with pytest.raises(KdrunError):
        deploy(tmp_path, nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.Unflatten(1, (4, 4)),
                                       _Cholesky()), "custom", data, DeploySettings(QUICK))
    assert (tmp_path / "export" / "student.onnx").read_bytes() == b"earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


class _Cholesky(nn.Module):
    def forward(self, x):
        return torch.linalg.cholesky(x @ x.transpose(-1, -2) + torch.eye(x.shape[-1])).flatten(1)[:, :10]


def test_qat_distillation_runs_end_to_end_exports_and_kdrun_export_redoes_it(tmp_path):
    result = kdrun(tmp_path, "distill", *FAST, "epochs=2", "student.kwargs.hidden=[16]", "student.quant=qat",
                   "student.qat_epochs=1", "deploy.calibration_batches=2")  # QAT implies the export
    assert result.returncode == 0, result.stderr
    run = run_dirs(tmp_path, "distill")[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["quant"]["mode"] == "qat" and summary["quant"]["first_epoch"] == 2
    assert "fake-quantized to INT8 from epoch 2" in (run / "distill.log").read_text()
    block = summary["deploy"]
    assert set(block["models"]) == {"teacher_fp32", "student_fp32", "student_int8"}
    assert block["speedup_over"] == "teacher_fp32" and set(block["speedups"]) == {"student_fp32", "student_int8"}
    assert all(m["max_abs_diff_vs_torch"] <= 1e-4 for k, m in block["models"].items() if k != "student_int8")
    assert block["ort_threads"] == 1 and block["models"]["student_int8"]["latency"]["batch_size"] == 16
    assert {p.name for p in (run / "export").iterdir()} == {"student.onnx", "student.int8.onnx", "teacher.onnx",
                                                            "deploy.json"}

    from kdrun.report import make_report
    make_report([run], tmp_path / "report")
    row = (tmp_path / "report" / "report.csv").read_text().splitlines()
    columns = dict(zip(row[0].split(","), row[1].split(",")))
    assert float(columns["ort_int8_batch1_ms"]) == block["models"]["student_int8"]["latency"]["batch1_ms_median"]
    assert float(columns["int8_test_acc"]) == block["models"]["student_int8"]["test_acc"]
    assert (tmp_path / "report" / "acc_vs_deployed_latency.png").is_file()

    from kdrun.commands.export import main
    assert main([str(run), "--no-int8"]) == 0
    again = json.loads((run / "summary.json").read_text())
    assert set(again["deploy"]["models"]) == {"teacher_fp32", "student_fp32"}
    assert again["test_acc"] == summary["test_acc"] and again["quant"] == summary["quant"]
    assert not (run / "export" / "student.int8.onnx").exists()


def test_kdrun_export_without_a_finished_student_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert cli(["export", str(tmp_path / "run")]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "holds no finished student (no summary.json)" in stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []


def test_evaluate_scores_a_checkpoint_and_its_onnx_file_alike(tmp_path, monkeypatch, capsys):
    from kdrun.commands.evaluate import main
    from kdrun.deploy.metadata import model_metadata
    from kdrun.models.checkpoint import save_checkpoint

    monkeypatch.chdir(tmp_path)
    data = load_dataset("fake", str(tmp_path), False, False, {"shape": [1, 40]})  # as conf/dataset/fake.yaml
    model = build_model("mlp", 10, (1, 40), {"hidden": [16]}).eval()
    save_checkpoint(tmp_path / "checkpoint.pt", model, arch="mlp", arch_kwargs={"hidden": [16]}, num_classes=10,
                    input_shape=(1, 40), dataset="fake", config={}, metrics={})
    (tmp_path / "model.onnx").write_bytes(to_onnx(model, (1, 40), model_metadata(data, "mlp", "student")))
    assert main([str(tmp_path / "checkpoint.pt"), "--out", "eval_pt", "--threads", "1"]) == 0  # the recorded dataset
    assert main([str(tmp_path / "model.onnx"), "dataset=fake", "--out", "eval_onnx", "--threads", "1"]) == 0
    from_pt, from_onnx = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("eval_pt", "eval_onnx"))
    expected = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert from_pt["test_acc"] == pytest.approx(expected) and from_onnx["test_acc"] == pytest.approx(expected)
    assert from_pt["confusion_matrix"] == from_onnx["confusion_matrix"]
    assert sum(map(sum, from_pt["confusion_matrix"])) == data.test_size
    assert set(from_pt["per_class_acc"]) == {str(i) for i in range(10)} and "top5_acc" in from_pt
    assert (tmp_path / "eval_onnx" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert from_onnx["format"] == "onnx" and from_onnx["latency"]["batch1_ms_median"] > 0


def test_evaluate_an_onnx_file_that_does_not_fit_the_dataset_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.onnx").write_bytes(to_onnx(build_model("mlp", 10, (1, 40), {"hidden": [8]}), (1, 40), {}))
    assert cli(["evaluate", str(tmp_path / "model.onnx"), "dataset=fake", "dataset.kwargs.shape=[3,8,8]"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1
    assert "takes inputs of shape [batch, 1, 40] but dataset 'fake' gives [batch, 3, 8, 8]" in stderr
    assert not (tmp_path / "outputs").exists()


def test_the_pareto_front_keeps_the_points_nothing_beats_on_both_latency_and_accuracy():
    from kdrun.report.plots import pareto_front

    points = [(1.0, 0.6), (2.0, 0.9), (1.5, 0.5), (3.0, 0.9), (0.5, 0.3), (2.5, 0.95), (1.0, 0.55)]
    assert pareto_front(points) == [(0.5, 0.3), (1.0, 0.6), (2.0, 0.9), (2.5, 0.95)]


def test_a_failed_export_at_the_end_of_a_run_is_recorded_and_the_run_keeps_its_files(tmp_path, caplog):
    from omegaconf import OmegaConf

    from kdrun.commands.export import deploy_notes, export_block
    from kdrun.run.config import StudentConfig, TrainStudentConfig

    cfg = OmegaConf.structured(TrainStudentConfig(student=StudentConfig(name="custom")))
    cfg.optim.batch_size = 8
    data = load_dataset("fake", str(tmp_path), False, False, {"shape": [4, 4]})
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.Unflatten(1, (4, 4)), _Cholesky())
    block = export_block(cfg, tmp_path, data, model)
    assert "no conversion for op aten.linalg_cholesky_ex" in block["error"]
    assert "kdrun export" in caplog.text and list(tmp_path.iterdir()) == []
    assert deploy_notes({"deploy": block})[0].startswith("export failed (the run finished)")


def test_fake_quantization_keeps_the_parameters_and_comes_off_exactly():
    from kdrun.deploy import fake_quant

    torch.manual_seed(0)
    model = build_model("cnn1d", 10, (1, 40), {"channels": 8})
    x, keys = torch.randn(16, 1, 40), list(model.state_dict())
    plain = model(x)
    assert fake_quant.attach(model) == 4 and fake_quant.attach(model) == 0  # 3 convs + the head; once
    quantized = model(x)
    assert list(model.state_dict()) == keys and 0 < (quantized - plain).abs().max() < 0.1
    quantized.square().sum().backward()  # straight-through: every weight still gets a gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    weight = fake_quant.fake_quantize_weight(model[10].weight)  # the Linear head
    assert all(len(row.unique()) <= 255 for row in weight)
    fake_quant.detach(model)
    assert not fake_quant.is_attached(model) and torch.equal(model(x), plain)
