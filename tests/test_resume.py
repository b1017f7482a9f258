"""Runs that survive: SIGKILL or SIGTERM at any point, resume, and end bitwise where an uninterrupted run ends.

The engine-level tests stop the loop mid-epoch in-process (dropout, augmentation, both
optimisers); the CLI tests kill real `kdrun` processes at two points and resume them.
"""

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, HANG_GUARD, kdrun, metric_rows, start_kdrun, summary, wait_until

from kdrun.core.errors import Interrupted, KdrunError
from kdrun.data import TensorData, load_dataset
from kdrun.data.augment import crop_flip_augment
from kdrun.methods.losses import KDLoss
from kdrun.models import build_model
from kdrun.run.resume import check_same_config, differences
from kdrun.run.signals import StopRequest
from kdrun.train.engine import fit
from kdrun.train.recipe import Recipe
from kdrun.train.state import CheckpointSchedule, load_state, save_state

CPU = torch.device("cpu")

# ~0.5 s per epoch on one thread: long enough to land a kill mid-epoch, short enough for CI.
SLOW = {"distill": [*FAST, "dataset.kwargs.num_train=20000", "epochs=4", "+student.kwargs.dropout=0.1"]}
SLOW["train-student"] = [a for a in SLOW["distill"] if not a.startswith("teacher.")]


pytestmark = pytest.mark.usefixtures("one_thread")


# --- the engine, in-process ----------------------------------------------------------------------

def _image_data() -> TensorData:
    data = load_dataset("fake", "/unused", False, False, {"shape": [3, 8, 8], "num_train": 200, "num_test": 40})
    return TensorData(data.name, data.x_train, data.y_train, data.x_test, data.y_test, data.num_classes,
                      crop_flip_augment(padding=2, flip=True))


def _fresh(seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", 10, (3, 8, 8), {"hidden": [32], "dropout": 0.3})


class StopAfter:
    """A stop flag that fires after `n` steps, like a signal arriving mid-epoch."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self) -> bool:
        self.n -= 1
        return self.n <= 0


@pytest.mark.parametrize("recipe", [
    Recipe(epochs=3, batch_size=32, lr=0.01, seed=3),
    Recipe(epochs=3, batch_size=32, optimizer="sgd", lr=0.05, schedule="multistep", milestones=(1, 2), seed=4),
], ids=["adamw-cosine", "sgd-multistep"])
@pytest.mark.parametrize("stop_after", [1, 7, 10, 21], ids=lambda n: f"step{n}")
def test_stopped_anywhere_and_resumed_from_last_pt_is_bitwise_identical(tmp_path, recipe, stop_after):
    data = _image_data()  # 7 steps per epoch: 1 and 10 stop mid-epoch, 7 at its end, 21 after the last step
    reference = _fresh()
    expected = fit(reference, data, recipe, CPU)

    path = tmp_path / "last.pt"
    model = _fresh()
    with pytest.raises(Interrupted):
        fit(model, data, recipe, CPU, checkpoint=lambda s: save_state(path, s), stop=StopAfter(stop_after))
    resumed = _fresh(seed=99)  # other initial weights: everything must come from last.pt
    history = fit(resumed, data, recipe, CPU, state=load_state(path), checkpoint=lambda s: save_state(path, s))

    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(history) == drop(expected)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_distillation_resumes_bitwise_with_a_live_teacher():
    data = _image_data()
    teacher = build_model("mlp", 10, (3, 8, 8), {"hidden": [16]})
    recipe, loss = Recipe(epochs=2, batch_size=32, seed=1), KDLoss(4.0, 0.9)
    reference = _fresh()
    expected = fit(reference, data, recipe, CPU, loss=loss, teacher=teacher)
    states = []
    with pytest.raises(Interrupted):
        fit(_fresh(), data, recipe, CPU, loss=loss, teacher=teacher, checkpoint=states.append, stop=StopAfter(10))
    resumed = _fresh(seed=5)
    history = fit(resumed, data, recipe, CPU, loss=loss, teacher=teacher, state=states[-1])
    assert [r["kd"] for r in history] == [r["kd"] for r in expected]
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()))


def test_checkpoint_every_sets_the_interval_and_zero_turns_it_off():
    data, recipe = _image_data(), Recipe(epochs=5, batch_size=64)
    for every, epochs_saved in [(1, [1, 2, 3, 4, 5]), (2, [2, 4, 5]), (0, [])]:
        saved = []
        fit(_fresh(), data, recipe, CPU, checkpoint=lambda s: saved.append(s["epoch"]), checkpoint_every=every)
        assert saved == epochs_saved


def test_checkpoint_min_seconds_skips_due_writes_until_the_previous_one_is_old_enough(monkeypatch):
    clock = iter([0.0, 4.0, 11.0, 12.0, 30.0, 31.0])  # time.monotonic() at each due epoch
    monkeypatch.setattr("kdrun.train.engine.time.monotonic", lambda: next(clock))
    schedule = CheckpointSchedule(every=1, min_seconds=10)
    assert [e for e in range(1, 7) if schedule.due(e, 6)] == [1, 3, 5, 6]  # 4 s and 12 s after a write skip; last always


def test_resume_refuses_a_changed_config_but_not_a_key_a_newer_kdrun_added():
    saved = {"T": 4.0, "optim": {"lr": 0.002}, "resume": None}
    assert differences(saved, {"T": 2.0, "optim": {"lr": 0.002}}) == ["T"]
    assert differences(saved, {"T": 4.0, "optim": {"lr": 0.002, "fused": True}, "checkpoint_min_seconds": 10.0}) == []
    assert differences(saved, {"T": 4.0}) == ["optim"]  # a key the run had and the config lost is a change
    with pytest.raises(KdrunError, match=r"differs in: optim\.lr\)"):
        check_same_config(Path("run"), saved, {"T": 4.0, "optim": {"lr": 0.1}, "resume": "run"})
    # how speed is measured is no training setting: a newer kdrun's latency defaults do not block a resume
    check_same_config(Path("run"), {**saved, "latency": {"warmup": 10}}, {**saved, "latency": {"warmup": 5}})


def test_a_second_ctrl_c_exits_at_once(monkeypatch):
    request = StopRequest()
    exits = []
    monkeypatch.setattr("os._exit", exits.append)
    request.handle(signal.SIGTERM, None)
    assert request() and request.exit_code == 143 and exits == []
    request.handle(signal.SIGINT, None)
    assert exits == [130]


# --- the CLI, killed for real ---------------------------------------------------------------------

def _plain_rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in metric_rows(run_dir)]


def assert_same_run(expected: Path, actual: Path) -> None:
    a = torch.load(expected / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(actual / "checkpoint.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "final weights differ"
    assert _plain_rows(actual) == _plain_rows(expected)
    assert summary(actual)["test_acc"] == summary(expected)["test_acc"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Uninterrupted reference runs (train-student, and distill from a stored teacher), one directory."""
    root = tmp_path_factory.mktemp("reference")
    assert kdrun(root, "train-teacher", *FAST, "dataset.kwargs.num_train=20000").returncode == 0
    for command in ("train-student", "distill"):
        run = kdrun(root, command, *SLOW[command], "keep_last=true", f"hydra.run.dir={root / command}")
        assert run.returncode == 0, run.stderr
    return root


def _after_first_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "last.pt").exists()


def _mid_epoch_3(run_dir: Path) -> bool:
    rows = metric_rows(run_dir)
    if len(rows) < 2:
        return False
    time.sleep(rows[-1]["seconds"] / 2)
    return True


@pytest.mark.parametrize("command", ["train-student", "distill"])
@pytest.mark.parametrize("kill_point", [_after_first_checkpoint, _mid_epoch_3], ids=["after-epoch-1", "mid-epoch-3"])
def test_sigkill_then_resume_ends_bitwise_like_the_uninterrupted_run(finished, command, kill_point):
    run_dir = finished / f"{command}-killed-{kill_point.__name__}"
    job = start_kdrun(finished, command, *SLOW[command], f"hydra.run.dir={run_dir}")
    wait_until(lambda: kill_point(run_dir), job)
    job.kill()
    job.wait()
    assert job.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists(), "the kill came too late to test anything"

    resumed = kdrun(finished, command, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from" in (run_dir / f"{command.replace('-', '_')}.log").read_text()
    assert_same_run(finished / command, run_dir)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_checkpoint_mark_the_run_interrupted_and_it_resumes(finished, signum, code):
    run_dir = finished / f"signalled-{signum}"
    job = start_kdrun(finished, "train-student", *SLOW["train-student"], f"hydra.run.dir={run_dir}")
    wait_until(lambda: len(metric_rows(run_dir)) >= 1, job)
    job.send_signal(signum)
    _, err = job.communicate(timeout=HANG_GUARD)
    assert job.returncode == code
    resume = f"kdrun train-student resume={run_dir}"
    assert f"resume with: {resume}" in err and "Traceback" not in err
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["resume"] == resume
    assert not (run_dir / "summary.json").exists() and (run_dir / "last.pt").exists()

    resumed = kdrun(finished, "train-student", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert not (run_dir / "status.json").exists()
    assert_same_run(finished / "train-student", run_dir)


@pytest.fixture
def done_run(finished, tmp_path):
    """A copy of the finished train-student run, to break in various ways."""
    import shutil

    return Path(shutil.copytree(finished / "train-student", tmp_path / "run"))


def test_resume_refuses_what_it_cannot_continue(finished, done_run, tmp_path):
    def error(*args):
        run = kdrun(tmp_path, *args)
        assert run.returncode == 2 and "Traceback" not in run.stderr + run.stdout
        [line] = run.stderr.strip().splitlines()
        assert line.startswith("kdrun: error: ")
        return line

    assert "already finished" in error("train-student", f"resume={done_run}")
    assert "is a 'train_student' run, not 'distill'" in error("distill", f"resume={done_run}")
    assert "takes no other arguments" in error("train-student", f"resume={done_run}", "seed=9")
    assert "is not a kdrun run directory" in error("train-student", f"resume={tmp_path}")
    (done_run / "summary.json").unlink()
    (done_run / "last.pt").unlink()
    assert "nothing to resume" in error("train-student", f"resume={done_run}")
