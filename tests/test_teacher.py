"""The teacher store: stable recipe hashes, and parallel jobs that train a teacher once."""

import os
import subprocess
import sys

from omegaconf import OmegaConf

from conftest import FAST, run_dirs, summary
from kdrun.teacher import store_path, teacher_recipe

TEACHER = {"name": "cnn1d", "kwargs": {"channels": 8}, "checkpoint": None, "store": "a", "train_if_missing": True,
           "train": {"epochs": 2, "seed": 0, "optim": {"lr": 0.01, "batch_size": 64}}}
DATASET = {"name": "fake", "data_dir": "/x", "download": False, "augment": False, "kwargs": {"num_train": 64}}


def _path(teacher=TEACHER, dataset=DATASET):
    return store_path(__import__("pathlib").Path("/store"),
                      teacher_recipe(OmegaConf.create(teacher), OmegaConf.create(dataset)))


def test_recipe_hash_ignores_paths_and_switches_but_not_the_recipe():
    base = _path()
    assert base.name.startswith("cnn1d-fake-") and base.suffix == ".pt"
    assert _path({**TEACHER, "store": "elsewhere", "train_if_missing": False}, {**DATASET, "data_dir": "/y"}) == base
    assert _path({**TEACHER, "train": {**TEACHER["train"], "seed": 1}}) != base
    assert _path({**TEACHER, "kwargs": {"channels": 16}}) != base
    assert _path(dataset={**DATASET, "kwargs": {"num_train": 65}}) != base


def test_parallel_jobs_train_one_teacher_once(tmp_path):
    env = {**os.environ}
    env.pop("HYDRA_FULL_ERROR", None)
    jobs = [subprocess.Popen([sys.executable, "-m", "kdrun", "distill", *FAST, "epochs=1", f"seed={seed}",
                              "teacher.train.epochs=3"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    for job in jobs:
        _, err = job.communicate(timeout=240)
        assert job.returncode == 0, err
    dirs = run_dirs(tmp_path, "distill")
    logs = [(d / "distill.log").read_text() for d in dirs]
    assert sum("Training teacher" in log for log in logs) == 1
    assert len({summary(d)["teacher"]["checkpoint"] for d in dirs}) == 1
    assert [p.name for p in (tmp_path / "outputs" / "teachers").iterdir() if p.suffix == ".tmp"] == []
