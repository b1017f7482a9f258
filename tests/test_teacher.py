"""The teacher store: stable recipe hashes, and parallel jobs that train a teacher once."""

from conftest import FAST, HANG_GUARD, run_dirs, start_kdrun, summary, wait_until
from omegaconf import OmegaConf

from kdrun.teachers.store import store_path, teacher_recipe

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


def _jobs(cwd, seeds, *extra):
    """Distill jobs started at once, sharing one teacher store; each in outputs/distill/job<seed>."""
    return {seed: start_kdrun(cwd, "distill", *FAST, "epochs=1", f"seed={seed}", "teacher.store=store",
                              f"hydra.run.dir=outputs/distill/job{seed}", *extra) for seed in seeds}


def _trained(cwd, seed) -> bool:
    log = cwd / "outputs" / "distill" / f"job{seed}" / "distill.log"
    return log.exists() and "Training teacher" in log.read_text()


def _assert_store_clean(cwd):
    store = list((cwd / "store").iterdir())
    assert len([p for p in store if p.suffix == ".pt"]) == 1
    assert [p.name for p in store if p.name.endswith(".tmp")] == [], "a half-written checkpoint was left"


def test_four_parallel_jobs_train_one_teacher_once(tmp_path):
    jobs = _jobs(tmp_path, range(4), "teacher.train.epochs=3")
    for job in jobs.values():
        _, err = job.communicate(timeout=HANG_GUARD)
        assert job.returncode == 0, err
    assert sum(_trained(tmp_path, seed) for seed in jobs) == 1
    dirs = run_dirs(tmp_path, "distill")
    assert len(dirs) == 4 and len({summary(d)["teacher"]["checkpoint"] for d in dirs}) == 1
    _assert_store_clean(tmp_path)


def test_a_job_killed_while_training_the_teacher_blocks_nobody(tmp_path):
    """The lock is an flock: the OS releases it when the holder dies, and a waiting job takes over."""
    jobs = _jobs(tmp_path, range(4), "teacher.train.epochs=150")
    wait_until(lambda: any(_trained(tmp_path, seed) for seed in jobs))
    [holder] = [seed for seed in jobs if _trained(tmp_path, seed)]
    jobs[holder].kill()
    jobs[holder].wait()
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").glob("*.pt")), "killed too late"
    survivors = [seed for seed in jobs if seed != holder]
    for seed in survivors:
        _, err = jobs[seed].communicate(timeout=HANG_GUARD)
        assert jobs[seed].returncode == 0, err
    assert sum(_trained(tmp_path, seed) for seed in survivors) == 1
    assert not (tmp_path / "outputs" / "distill" / f"job{holder}" / "summary.json").exists()
    _assert_store_clean(tmp_path)


def test_the_lock_holder_removes_temp_files_a_killed_job_left(tmp_path):
    from kdrun.teachers.store import remove_stale_temps

    path = tmp_path / "cnn1d-fake-0123456789ab.pt"
    stale, other = tmp_path / f".{path.name}.x1y2.tmp", tmp_path / ".other.pt.x1y2.tmp"
    stale.write_bytes(b"half"), other.write_bytes(b"not ours")
    assert list(tmp_path.glob("*.pt")) == []  # temp names never match the store's *.pt
    remove_stale_temps(path)
    assert not stale.exists() and other.exists()
