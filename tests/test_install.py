"""A non-editable install finds its configs and its Hydra plugin from any directory; torchvision imports beside torch."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_torchvision_imports_with_this_torch():
    import torch
    import torchvision

    assert torchvision.ops.nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([1.0]), 0.5).tolist() == [0]


def test_wheel_ships_configs_and_runs_from_another_directory(tmp_path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO)], check=True, capture_output=True)
    assert (target / "kdrun" / "conf" / "distill.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    shown = subprocess.run([sys.executable, "-m", "kdrun", "distill", "T=7", "--cfg", "job"], cwd=elsewhere, env=env,
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "T: 7.0" in shown.stdout
    where = subprocess.run([sys.executable, "-c", "import kdrun.run.config as c; print(c.config_dir())"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(target), "the installed package must use its own configs"
    launcher = subprocess.run([sys.executable, "-m", "kdrun", "distill", "hydra/launcher=stacked",
                               "--cfg", "hydra", "--package", "hydra.launcher"], cwd=elsewhere, env=env,
                              capture_output=True, text=True)
    assert launcher.returncode == 0, launcher.stderr
    assert "StackedLauncher" in launcher.stdout and "max_group_size" in launcher.stdout
    plugin = subprocess.run([sys.executable, "-c", "import hydra_plugins.kdrun_stacked_launcher as p; print(p.__file__)"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(plugin).is_relative_to(target), "the stacked launcher must ship in the wheel"
    slurm = subprocess.run([sys.executable, "-m", "kdrun", "distill", "hydra/launcher=slurm", "--cfg", "hydra",
                            "--package", "hydra.launcher"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert slurm.returncode == 0, slurm.stderr
    assert "KdrunSlurmLauncher" in slurm.stdout and "hopeless_pending_s" in slurm.stdout, "kdrun's SLURM launcher ships"
