"""A run directory is sacred, and it is data, not code: hostile input that once overwrote a finished run, wrote
outside its run dir or ran a command named inside a run dir. Each case ends in one line and exit 2, and the
finished run next to it stays byte-identical."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import pytest
import yaml
from conftest import kdrun, start_kdrun
from test_bad_input import STUDENT

ONE_EPOCH = [*STUDENT, "epochs=1"]


def tree_hash(root: Path) -> str:
    """Every file under `root`, names and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A working directory with one finished run in outputs/done (and one sweep in outputs/sweep)."""
    cwd = tmp_path_factory.mktemp("sacred")
    assert kdrun(cwd, "train-student", *ONE_EPOCH, "hydra.run.dir=outputs/done").returncode == 0
    sweep = kdrun(cwd, "train-student", "-m", *ONE_EPOCH, "seed=0,1", "hydra.sweep.dir=outputs/sweep",
                  "keep_last=true")  # its jobs are made to look killed after their last checkpoint
    assert sweep.returncode == 0, sweep.stderr
    return cwd


def refused(cwd: Path, *args: str, env: dict | None = None) -> str:
    """Run kdrun with `args`: it must fail with one line and leave every existing run byte-identical."""
    before = tree_hash(cwd / "outputs")
    result = kdrun(cwd, *args, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("kdrun: error:"), result.stderr
    assert tree_hash(cwd / "outputs") == before, "an existing run changed"
    return lines[0]


@pytest.mark.parametrize("run_dir, words", [
    ("outputs/${oc.env:KDRUN_SACRED,done}", "already holds a finished run"),  # resolves onto a finished run
    ("/", "holds your working directory"),
    ("..", "holds your working directory"),
    ("outputs/../../elsewhere", "leaves the working directory"),
    ("outputs/done/inner", "lies inside"),
])
def test_a_run_dir_that_resolves_onto_another_run_or_above_the_working_dir_is_refused(finished, run_dir, words):
    assert words in refused(finished, "train-student", *ONE_EPOCH, f"hydra.run.dir={run_dir}")


def test_hydra_files_never_escape_the_run_dir(finished):
    line = refused(finished, "train-student", *ONE_EPOCH, "hydra.run.dir=outputs/new", "hydra.output_subdir=../../x")
    assert "would write outside each run dir" in line and not (finished / "x").exists()


@pytest.mark.parametrize("subdir, words", [("same", "one directory"), ("../${hydra.job.num}", "outside the sweep dir")])
def test_jobs_of_a_sweep_never_share_or_leave_the_sweep_dir(finished, subdir, words):
    assert words in refused(finished, "train-student", "-m", *ONE_EPOCH, "seed=0,1", "hydra.sweep.dir=outputs/s2",
                            f"hydra.sweep.subdir={subdir}")


def test_a_sweep_subdir_made_of_every_swept_key_is_distinct_enough(finished):
    result = kdrun(finished, "train-student", "-m", *ONE_EPOCH, "seed=0,1", "hydra.sweep.dir=outputs/s3",
                   "hydra.sweep.subdir=seed${seed}")
    assert result.returncode == 0, result.stderr
    assert {p.name for p in (finished / "outputs/s3").iterdir() if p.is_dir()} == {"seed0", "seed1"}


def test_a_time_pattern_that_resolves_to_a_finished_run_is_refused_not_rewritten(workdir):
    pattern = "hydra.run.dir=outputs/${now:%Y}"
    assert kdrun(workdir, "train-student", *ONE_EPOCH, pattern).returncode == 0
    (workdir / "outputs").mkdir(exist_ok=True)
    assert "already holds a finished run" in refused(workdir, "train-student", *ONE_EPOCH, pattern)


# --- a run dir is data --------------------------------------------------------------------------

def crafted_run(root: Path, overrides: list[str]) -> Path:
    """An interrupted-looking train-student run dir whose saved overrides someone else wrote."""
    run_dir = root / "outputs" / "sent"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"command": "train_student"}))
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / "last.pt").write_bytes(b"")
    return run_dir


EVIL = ["student=custom", "student.target=os:system", "+student.kwargs.command=touch PWNED"]


def test_resume_never_runs_a_target_named_only_inside_the_run_dir(workdir):
    run_dir = crafted_run(workdir, EVIL)
    line = refused(workdir, "train-student", f"resume={run_dir}")
    assert "a run dir is data" in line and "student.target=os:system" in line and "trust_code=true" in line
    assert not (workdir / "PWNED").exists()


def test_the_same_target_given_again_is_the_users_consent(workdir):
    run_dir = crafted_run(workdir, ["student=custom", "student.target=json:loads"])
    line = refused(workdir, "train-student", f"resume={run_dir}", "student.target=json:dumps")
    assert "a run dir is data" in line, "another target is no consent to this one"
    consented = kdrun(workdir, "train-student", f"resume={run_dir}", "student.target=json:loads")
    assert consented.returncode == 2 and "a run dir is data" not in consented.stderr, consented.stderr
    assert "json:loads" in consented.stderr, "consent given: the resume went on to build the target"


def test_a_sweep_resume_never_replays_hydra_callbacks_or_shell_lines_from_the_sweep_dir(finished, tmp_path):
    sweep = tmp_path / "outputs" / "sweep"
    sweep.parent.mkdir()
    import shutil

    shutil.copytree(finished / "outputs" / "sweep", sweep)
    (sweep / "1" / "summary.json").unlink()
    saved = yaml.safe_load((sweep / "multirun.yaml").read_text())
    saved["hydra"]["overrides"]["hydra"].append("+hydra.callbacks.x._target_=os.system")
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(saved))
    line = refused(tmp_path, "train-student", f"resume={sweep}")
    assert "a run dir is data" in line and "hydra.callbacks.x._target_" in line


# --- the command line itself ---------------------------------------------------------------------

def test_a_missing_equals_sign_is_named(workdir):
    (workdir / "outputs").mkdir()
    assert refused(workdir, "distill", "epochs", "3") == "kdrun: error: 'epochs' is not an override: write " \
                                                          "KEY=VALUE, e.g. epochs=3"


def test_info_flags_with_a_sweep_are_one_line(workdir):
    (workdir / "outputs").mkdir()
    assert "drop -m" in refused(workdir, "distill", "-m", "T=1,2", "--info", "all")


def test_ctrl_c_in_the_first_moments_is_one_line_not_a_traceback(workdir):
    import os
    import subprocess
    import sys

    env = {**os.environ, "KDRUN_TEST": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    for delay in (0.2, 0.6, 1.2):  # while importing, composing, starting Hydra
        # as from a terminal: SIGINT's default action (a test runner's worker may ignore it, and children inherit that)
        job = subprocess.Popen([sys.executable, "-m", "kdrun", "train-student", *ONE_EPOCH, "epochs=50"], cwd=workdir,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        job.send_signal(signal.SIGINT)
        _, err = job.communicate(timeout=600)
        # 130 from kdrun's handlers; killed by SIGINT itself (-2) if it lands before Python installs its own
        assert job.returncode in (130, -signal.SIGINT) and "Traceback" not in err, err
        assert not list((workdir / "outputs").rglob("summary.json"))


# --- data that hangs or hides where it failed ----------------------------------------------------

def test_a_fifo_in_an_image_folder_is_skipped_and_never_opened(tmp_path):
    import os

    from kdrun.core.errors import KdrunError
    from kdrun.data.stream import image_folder, read_image
    from kdrun.data.synthetic import write_image_folder

    root = write_image_folder(tmp_path / "imgs", classes=2, train_per_class=2, val_per_class=1, size=(8, 8))
    fifo = root / "train" / "class0" / "blocks.png"
    os.mkfifo(fifo)
    data = image_folder(root, download=False, augment=False, image_size=8)
    assert data.train_size == 4, "the FIFO is no image"
    with pytest.raises(KdrunError, match="blocks.png is not a regular file"):
        read_image(str(fifo))  # returns at once: a FIFO is never opened


def test_a_corrupt_image_names_its_path_in_one_line(workdir):
    from kdrun.data.synthetic import write_image_folder

    root = write_image_folder(workdir / "imgs", classes=2, train_per_class=3, val_per_class=1, size=(8, 8))
    bad = root / "train" / "class1" / "00001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (workdir / "outputs").mkdir()
    result = kdrun(workdir, "train-student", *[a for a in ONE_EPOCH if not a.startswith("dataset")],
                   "dataset=image_folder", f"dataset.data_dir={root}", "dataset.image_size=8",
                   "optim.batch_size=2", "hydra.run.dir=outputs/corrupt")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines[-1].startswith(f"kdrun: error: cannot read image {bad}"), result.stderr
    assert "Traceback" not in result.stderr and not (workdir / "outputs/corrupt/summary.json").exists()


def test_an_edited_kdrun_checkpoint_is_named_field_by_field(tmp_path):
    import torch

    from kdrun.core.errors import KdrunError
    from kdrun.models.checkpoint import read_weights, save_checkpoint

    path = tmp_path / "model.pt"
    save_checkpoint(path, torch.nn.Linear(4, 3), arch="mlp", arch_kwargs={}, num_classes=3, input_shape=(4,),
                    dataset="fake", config={}, metrics={})
    assert read_weights(path).arch == "mlp"
    payload = torch.load(path, weights_only=True)
    for field, value, words in (("arch", None, "without its 'arch' field"),
                                ("num_classes", "ten", "'num_classes' must be an integer >= 1"),
                                ("input_shape", [0, -1], "'input_shape' must be a list of positive integers")):
        edited = dict(payload)
        if value is None:
            del edited[field]
        else:
            edited[field] = value
        torch.save(edited, path)
        with pytest.raises(KdrunError, match=words):
            read_weights(path)


# --- failures outside kdrun's own errors ---------------------------------------------------------

BUILDERS = '''
import sys
import torch

def exits(num_classes, input_shape):
    sys.exit(0)

def broken(num_classes, input_shape):
    return {}["nope"]

class NoParameters(torch.nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return torch.zeros(x.shape[0], self.num_classes)
'''


@pytest.mark.parametrize("target, words", [
    ("exits", "user code called sys.exit(0) before the run finished"),
    ("broken", "KeyError: 'nope' (unexpected; the traceback is in "),
    ("NoParameters", "has no trainable parameters"),
    ("syntax", "cannot import target 'syntax_error:build' (SyntaxError"),
])
def test_failures_in_user_code_leave_a_failed_status_and_one_line(workdir, target, words):
    (workdir / "builders.py").write_text(BUILDERS)
    (workdir / "syntax_error.py").write_text("def build(:\n")
    module = "syntax_error:build" if target == "syntax" else f"builders:{target}"
    (workdir / "outputs").mkdir()
    result = kdrun(workdir, "train-student", *ONE_EPOCH, "student=custom", f"student.target={module}",
                   "hydra.run.dir=outputs/user", env={"PYTHONPATH": str(workdir)})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and words in lines[-1] and "Traceback" not in result.stderr, result.stderr
    status = yaml.safe_load((workdir / "outputs/user/status.json").read_text())
    assert status["status"] == "failed" and words in status["error"]
    assert not (workdir / "outputs/user/summary.json").exists()
    if target == "broken":
        assert "Traceback" in next((workdir / "outputs/user").glob("*.log")).read_text(), "the log keeps the traceback"


def test_a_teacher_that_outputs_nan_is_named_as_the_cause(workdir):
    import torch
    from conftest import FAST

    from kdrun.models.checkpoint import CHECKPOINT_FORMAT

    args = [*FAST, "epochs=1"]
    assert kdrun(workdir, "train-teacher", *args, "hydra.run.dir=outputs/teacher").returncode == 0
    payload = torch.load(workdir / "outputs/teacher/checkpoint.pt", weights_only=True)
    assert payload["format"] == CHECKPOINT_FORMAT
    first = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][first] = torch.full_like(payload["state_dict"][first], float("nan"))
    torch.save(payload, workdir / "nan.pt")
    result = kdrun(workdir, "distill", *args, "teacher.checkpoint=nan.pt", "hydra.run.dir=outputs/d")
    assert result.returncode == 2 and "the teacher outputs NaN or inf" in result.stderr.strip().splitlines()[-1]
    assert "failed" in (workdir / "outputs/d/status.json").read_text()


# --- one process per sweep ------------------------------------------------------------------------

def test_a_sweep_has_one_resumer_at_a_time(finished, tmp_path):
    import shutil

    from kdrun.run.rundir import owned

    sweep = tmp_path / "outputs" / "sweep"
    shutil.copytree(finished / "outputs" / "sweep", sweep)
    (sweep / "0" / "summary.json").unlink()
    statuses = {p: p.read_bytes() for p in sweep.rglob("status.json")}
    with owned(sweep):  # another resume of this sweep is running
        line = refused(tmp_path, "train-student", f"resume={sweep}")
    assert "is in use by another kdrun process" in line
    assert {p: p.read_bytes() for p in sweep.rglob("status.json")} == statuses


# --- the teacher store trusts no path -------------------------------------------------------------

def test_kdrun_writes_nothing_beside_a_users_own_teacher(workdir):
    import os
    import shutil

    from conftest import FAST

    args = [*FAST, "epochs=1"]
    assert kdrun(workdir, "train-teacher", *args, "hydra.run.dir=outputs/teacher").returncode == 0
    mine = workdir / "my_models"
    mine.mkdir()
    shutil.copy(workdir / "outputs/teacher/checkpoint.pt", mine / "teacher.pt")
    os.chmod(mine, 0o555)
    try:
        result = kdrun(workdir, "distill", *args, "teacher.checkpoint=my_models/teacher.pt", "hydra.run.dir=outputs/d")
    finally:
        os.chmod(mine, 0o755)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in mine.iterdir()] == ["teacher.pt"], "no .facts or lock beside the user's file"
    assert list((workdir / "outputs/teachers/.facts").glob("teacher-*.facts")), "the facts live in kdrun's store"


def test_an_image_folder_replaced_at_the_same_path_gets_a_new_teacher(tmp_path):
    from omegaconf import OmegaConf

    from kdrun.data.synthetic import write_image_folder
    from kdrun.teachers.store import teacher_recipe

    root = write_image_folder(tmp_path / "imgs", classes=2, train_per_class=2, val_per_class=1, size=(8, 8))
    teacher = OmegaConf.create({"name": "resnet8", "kwargs": {}, "train": {"epochs": 1}})
    dataset = OmegaConf.create({"name": "image_folder", "augment": False, "kwargs": {}, "data_dir": str(root)})
    before = teacher_recipe(teacher, dataset)
    assert teacher_recipe(teacher, dataset) == before, "the same content, the same teacher"
    write_image_folder(root, classes=2, train_per_class=2, val_per_class=1, size=(8, 8), seed=1)  # same names, count
    assert teacher_recipe(teacher, dataset) != before


# --- saved configs mean what they meant -----------------------------------------------------------

def test_a_run_with_now_in_its_config_resumes_and_reports_with_the_value_it_resolved(workdir):
    from conftest import metric_rows, wait_until

    args = [*STUDENT, "epochs=3", "dataset.kwargs.num_train=20000", "dataset.data_dir=data/${now:%H%M%S%f}"]
    job = start_kdrun(workdir, "train-student", *args, "hydra.run.dir=outputs/r")
    wait_until(lambda: len(metric_rows(workdir / "outputs/r")) >= 1, job)
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=600)
    started_with = yaml.safe_load((workdir / "outputs/r/.hydra/resolved.yaml").read_text())["dataset"]["data_dir"]
    assert started_with.startswith("data/") and "${" not in started_with
    time.sleep(0.01)  # the clock has moved on
    result = kdrun(workdir, "train-student", "resume=outputs/r")
    assert result.returncode == 0, result.stderr
    assert len(metric_rows(workdir / "outputs/r")) == 3, "continued, not started over"
    assert yaml.safe_load((workdir / "outputs/r/.hydra/resolved.yaml").read_text())["dataset"]["data_dir"] == started_with
    assert kdrun(workdir, "report", "outputs/r").returncode == 0


# --- deaths no handler sees ------------------------------------------------------------------------

def test_a_batch_whose_relation_matrices_cannot_fit_is_refused_before_any_run(workdir):
    (workdir / "outputs").mkdir()
    line = refused(workdir, "distill", "loss=rkd", "optim.batch_size=100000")
    assert "loss=rkd at optim.batch_size=100000 needs about" in line and "lower optim.batch_size" in line


def test_a_run_killed_where_no_handler_runs_is_recorded_failed_by_the_next_report(workdir):
    import json

    from conftest import metric_rows, wait_until

    job = start_kdrun(workdir, "train-student", *STUDENT, "epochs=50", "dataset.kwargs.num_train=20000",
                      "hydra.run.dir=outputs/k")
    wait_until(lambda: len(metric_rows(workdir / "outputs/k")) >= 1, job)
    job.kill()  # what the kernel's OOM killer does
    job.communicate(timeout=600)
    assert not (workdir / "outputs/k/status.json").exists()
    report = kdrun(workdir, "report", "outputs/k")
    status = json.loads((workdir / "outputs/k/status.json").read_text())
    assert status["status"] == "failed" and "ended without a word" in status["error"]
    assert "ended without a word" in report.stdout + report.stderr


def test_sigterm_to_a_sweep_resume_stops_its_child_too(workdir):
    import subprocess

    from conftest import metric_rows, wait_until

    sweep = workdir / "outputs" / "sweep"
    args = [*STUDENT, "epochs=50", "dataset.kwargs.num_train=20000", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    first = start_kdrun(workdir, "train-student", "-m", *args)
    wait_until(lambda: len(metric_rows(sweep / "0")) >= 1, first)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=600)
    rows = len(metric_rows(sweep / "0"))
    resumer = start_kdrun(workdir, "train-student", f"resume={sweep}")
    wait_until(lambda: len(metric_rows(sweep / "0")) > rows, resumer)
    [child] = subprocess.run(["pgrep", "-P", str(resumer.pid)], capture_output=True, text=True).stdout.split()
    resumer.send_signal(signal.SIGTERM)
    _, err = resumer.communicate(timeout=600)
    assert resumer.returncode == 143 and "Traceback" not in err, err
    wait_until(lambda: subprocess.run(["kill", "-0", child], capture_output=True).returncode != 0, timeout=60)
    assert yaml.safe_load((sweep / "0" / "status.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("args, words", [
    (["train-student", *ONE_EPOCH, "dataset.val_split=1e-9"], "dataset.val_split=1e-09 holds out 0 of"),
    (["distill", *ONE_EPOCH, "teacher.train.epochs=1", "dataset.kwargs.shape=[3,16,16]", "teacher=resnet56",
      "teacher.name=resnet8", "student=resnet8", "loss=reviewkd", "optim.batch_size=1"],
     "a batch of one example reached a BatchNorm layer"),
])
def test_settings_that_break_training_are_named(workdir, args, words):
    (workdir / "outputs").mkdir()
    result = kdrun(workdir, *args, "hydra.run.dir=outputs/s")
    assert result.returncode == 2 and words in result.stderr.strip().splitlines()[-1], result.stderr
    assert "Traceback" not in result.stderr and "failed" in (workdir / "outputs/s/status.json").read_text()


# --- found by trying beyond the examples ------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["hydra.mode=MULTIRUN", "hydra.sweep.dir=outputs/done"], "hydra.mode is kdrun's to set"),
    (["hydra.run.dir=outputs/sweep/new"], "lies inside"),
    (["hydra.run.dir=${hydra:runtime.cwd}/x"], "cannot resolve where the run writes"),
    (["hydra.job.name=${oc.env:KDRUN_UNSET_VARIABLE}"], "cannot resolve where the run writes"),
    (["hydra.run.dir=x/" + "a" * 300], "File name too long"),
    (["-cn", "train_student"], "-cn is not for kdrun"),
    (["=3"], "'=3' has no key"),
    (["--bogus"], "unknown flag '--bogus'"),
    (["T=" + "1" * 5000], "cannot parse overrides"),
])
def test_beyond_the_examples_every_path_and_word_is_checked(finished, args, words):
    command = "distill" if args[0] in ("=3", "-cn") or args[0].startswith("T=") else "train-student"
    assert words in refused(finished, command, *ONE_EPOCH, *args)


def test_a_forced_run_dir_override_cannot_slip_past_the_check(finished):
    """`++hydra.run.dir=A hydra.run.dir=B`: the one checked is the one written, and only one is."""
    before = tree_hash(finished / "outputs" / "done")
    result = kdrun(finished, "train-student", *ONE_EPOCH, "++hydra.run.dir=outputs/done", "hydra.run.dir=outputs/fresh")
    assert result.returncode == 0, result.stderr
    assert (finished / "outputs/fresh/summary.json").exists() and tree_hash(finished / "outputs" / "done") == before


def test_duplicate_values_under_a_subdir_named_by_them_are_refused(finished):
    assert "one directory" in refused(finished, "train-student", "-m", *ONE_EPOCH, "seed=0,0",
                                      "hydra.sweep.dir=outputs/s5", "hydra.sweep.subdir=${seed}")


def test_a_second_run_into_a_fresh_dir_is_refused_before_hydra_writes_there(workdir):
    from conftest import wait_until

    first = start_kdrun(workdir, "train-student", *STUDENT, "epochs=30", "dataset.kwargs.num_train=20000",
                        "hydra.run.dir=outputs/race")
    # Hydra writes config.yaml, hydra.yaml, then overrides.yaml, each in place: the last one there, the first is whole
    wait_until(lambda: (workdir / "outputs/race/.hydra/overrides.yaml").exists(), first)
    config = (workdir / "outputs/race/.hydra/config.yaml").read_bytes()
    assert config.startswith(b"command: train_student")
    second = kdrun(workdir, "train-student", *ONE_EPOCH, "seed=7", "hydra.run.dir=outputs/race")
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=600)
    assert second.returncode == 2 and "in use by another kdrun process" in second.stderr
    assert (workdir / "outputs/race/.hydra/config.yaml").read_bytes() == config, "the first run's config stays"


@pytest.mark.parametrize("planted", [["++hydra.run.dir={victim}"], ["hydra.mode=MULTIRUN", "hydra.sweep.dir={victim}"]])
def test_a_crafted_run_dir_cannot_send_its_resume_elsewhere(finished, tmp_path, planted):
    import shutil

    shutil.copytree(finished / "outputs", tmp_path / "outputs")
    victim = tmp_path / "outputs" / "done"
    run_dir = crafted_run(tmp_path / "c", ["seed=1", *(p.format(victim=victim) for p in planted)])
    line = refused(tmp_path, "train-student", f"resume={run_dir}", "trust_code=true")
    assert "names where its run writes" in line


def test_report_replaces_planted_symlinks_instead_of_writing_through_them(finished, tmp_path):
    import shutil

    shutil.copytree(finished / "outputs" / "done", tmp_path / "victim")
    shutil.copytree(finished / "outputs" / "done", tmp_path / "r" / "run")
    before = tree_hash(tmp_path / "victim")
    for name, target in (("report.csv", "summary.json"), ("report.md", "metrics.jsonl"),
                         ("acc_vs_latency.png", "checkpoint.pt")):
        (tmp_path / "r" / name).symlink_to(tmp_path / "victim" / target)
    assert kdrun(tmp_path, "report", "r").returncode == 0
    assert tree_hash(tmp_path / "victim") == before and not (tmp_path / "r" / "report.csv").is_symlink()


def test_report_never_blocks_on_a_fifo_summary(tmp_path):
    import os

    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / "run" / "summary.json")
    result = kdrun(tmp_path, "report", "run")
    assert "not a regular file" in result.stdout + result.stderr


def test_a_random_state_from_another_kind_of_device_is_one_line():
    import torch

    from kdrun.core.errors import KdrunError
    from kdrun.train.state import capture_rng, restore_rng

    rng = capture_rng(torch.Generator(), torch.Generator())
    rng["augment"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state is 16 bytes, a CPU one's 5056
    with pytest.raises(KdrunError, match="saved by a run on another kind of device"):
        restore_rng(rng, torch.Generator(), torch.Generator())
