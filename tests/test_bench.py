"""`make bench` runs end to end and records every scenario with its conditions."""

import json
import subprocess
import sys

from conftest import HANG_GUARD


def test_bench_prints_ratios_and_writes_json(tmp_path):
    run = subprocess.run([sys.executable, "-m", "kdrun.bench", "--pairs", "mnist1d", "--epochs", "2", "--rounds", "1"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=HANG_GUARD)
    assert run.returncode == 0, run.stderr
    assert "ratio to plain" in run.stdout and "bare loop epoch" in run.stdout
    [written] = (tmp_path / "outputs" / "bench").glob("*.json")
    [result] = json.loads(written.read_text())["results"]
    assert {"device", "dtype", "batch_size", "threads"} <= set(result)
    assert len(result["scenarios"]) == 5 and "crd, teacher features live" in result["scenarios"]
    assert all(s["epoch_seconds"] > 0 for s in result["scenarios"].values())


def test_streaming_bench_times_the_dataloader_against_the_same_images_in_memory(tmp_path):
    run = subprocess.run([sys.executable, "-m", "kdrun.bench", "--pairs", "streaming", "--epochs", "2", "--rounds", "1",
                          "--workers", "1", "--images", "160"], cwd=tmp_path, capture_output=True, text=True, timeout=HANG_GUARD)
    assert run.returncode == 0, run.stderr
    assert "ratio to in memory" in run.stdout
    [written] = (tmp_path / "outputs" / "bench").glob("*.json")
    [result] = json.loads(written.read_text())["results"]
    assert result["workers"] == 1 and result["train_samples"] == 160
    assert [label.split(" (")[0] for label in result["scenarios"]] == [
        "in memory", "streamed", "streamed + RandomResizedCrop/flip"]
    assert all(s["epoch_seconds"] > 0 for s in result["scenarios"].values())


def test_gpu_check_runs_every_step_at_toy_sizes_on_the_cpu(tmp_path):
    run = subprocess.run([sys.executable, "-m", "kdrun.bench.gpu_check", "--smoke", "--device", "cpu"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=HANG_GUARD)
    assert run.returncode == 0, run.stderr
    [out] = (tmp_path / "outputs" / "bench").glob("gpu-check-*.json")
    result = json.loads(out.read_text())
    assert [p["student"] for p in result["pairs"]] == ["resnet8x4", "resnet20"]
    for pair in result["pairs"]:
        assert {"kd, cached teacher logits", "kd, teacher run every batch"} <= set(pair["scenarios"])
        assert all(t["epoch_seconds"] > 0 for t in pair["scenarios"].values())
    assert result["streaming"]["scenarios"] and "skipped" in result["ddp"]


def test_deploy_bench_times_eager_against_onnx_runtime_fp32_and_int8(capsys):
    from kdrun.bench.deployed import run_deploy_bench, show_deploy
    from kdrun.measure.latency import Protocol

    result = run_deploy_bench(["demo student (mlp)"], Protocol(batch_size=8, min_reps=3, min_seconds=0.0, max_seconds=0.2))
    [row] = result["models"].values()
    assert list(row["latency"]) == ["eager", "ort_fp32", "ort_int8"] and set(row["speedups"]) == {"ort_fp32", "ort_int8"}
    assert all(latency["reps"] >= 3 and latency["batch_size"] == 8 for latency in row["latency"].values())
    show_deploy(result)
    assert "ratio: eager median / this runtime's median" in capsys.readouterr().out


def test_the_cold_start_rows_bare_script_distills_from_a_teacher_file_and_ends_either_way(tmp_path):
    """The script `make bench` times kdrun against: it must keep running as kdrun's modules change."""
    import torch

    from kdrun.bench.trust import BARE_DISTILL
    from kdrun.models import build_model

    teacher = tmp_path / "teacher.pt"
    torch.save({"state_dict": build_model("cnn1d", 10, (1, 40), {"channels": 64}).state_dict()}, teacher)
    for ending in ([], ["freeze"]):
        run = subprocess.run([sys.executable, "-c", BARE_DISTILL, str(teacher), "1", *ending], cwd=tmp_path,
                             capture_output=True, text=True, timeout=HANG_GUARD)
        assert run.returncode == 0, run.stderr
        assert 0.0 <= float(run.stdout.strip()) <= 1.0  # the last epoch's test accuracy
