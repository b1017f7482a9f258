"""Stacked sweeps: a job trained in a stacked group equals the same job trained alone; grouping rules;
the output contract job by job; a group stopped by SIGTERM resumes."""

import json
import signal

import pytest
import torch
from conftest import FAST, HANG_GUARD, kdrun, metric_rows, run_dirs, start_kdrun, summary, wait_until
from omegaconf import OmegaConf

from kdrun.core.errors import Interrupted
from kdrun.data import load_dataset
from kdrun.methods.losses import KDLoss
from kdrun.models import build_model
from kdrun.models.checkpoint import load_weights, read_weights
from kdrun.run.config import register_schemas
from kdrun.run.preflight import compose_plain
from kdrun.sweep.groups import plan
from kdrun.sweep.stacked import Member, fit_group
from kdrun.train.engine import fit
from kdrun.train.evaluate import predict
from kdrun.train.recipe import Recipe

CPU = torch.device("cpu")
TOLERANCE = 1e-5  # relative, on every per-epoch metric and final weight (README: "Equivalence")
JOBS = [dict(seed=0, T=2.0, alpha=0.5, lr=2e-3), dict(seed=1, T=4.0, alpha=0.9, lr=1e-3),
        dict(seed=2, T=8.0, alpha=0.7, lr=3e-3)]
ARCHS = {"mlp": {"hidden": [32, 32]}, "cnn1d": {"channels": 8}}  # cnn1d has BatchNorm: running stats per job

pytestmark = pytest.mark.usefixtures("one_thread")


def _data():
    return load_dataset("fake", "/unused", False, False, {"shape": [1, 40], "num_train": 300, "num_test": 100})


def _student(arch, seed):
    torch.manual_seed(seed)
    return build_model(arch, 10, (1, 40), ARCHS[arch])


def _recipe(job, optimizer):
    return Recipe(epochs=2, batch_size=64, optimizer=optimizer, lr=job["lr"], weight_decay=5e-4, seed=job["seed"],
                  schedule="cosine" if optimizer == "adamw" else "multistep", milestones=(1,))


def _teacher_logits(data):
    torch.manual_seed(9)
    return predict(build_model("mlp", 10, (1, 40), {"hidden": [16]}), data.x_train)


def _close(a, b):
    return abs(a - b) <= TOLERANCE * max(1.0, abs(a), abs(b))


@pytest.mark.parametrize("arch,optimizer", [("mlp", "adamw"), ("cnn1d", "sgd")])
def test_a_stacked_job_equals_the_same_job_trained_alone(arch, optimizer):
    data = _data()
    logits = _teacher_logits(data)
    teacher = build_model("mlp", 10, (1, 40), {"hidden": [16]})  # fit wants a module; the logits are given
    alone = []
    for job in JOBS:
        model = _student(arch, job["seed"])
        history = fit(model, data, _recipe(job, optimizer), CPU, loss=KDLoss(job["T"], job["alpha"]), teacher=teacher,
                      teacher_logits=logits)
        alone.append((model, history))
    members = [Member(_student(arch, j["seed"]), _recipe(j, optimizer), (j["T"], 1 - j["alpha"], j["alpha"]))
               for j in JOBS]
    fit_group(members, data, CPU, teacher_logits=logits)
    for (model, history), member in zip(alone, members):
        assert len(member.history) == len(history) == 2
        for expected, got in zip(history, member.history):
            for key in ("train_loss", "ce", "kd", "test_acc", "test_top5", "lr"):
                assert _close(expected[key], got[key]), (key, expected[key], got[key])
        for (name, expected), got in zip(model.state_dict().items(), member.model.state_dict().values()):
            assert torch.allclose(expected.float(), got.float(), rtol=TOLERANCE, atol=TOLERANCE), name
    assert len({round(m.history[-1]["train_loss"], 4) for m in members}) == len(JOBS), "jobs must really differ"


def test_a_batchnorm_cifar_student_stacked_equals_itself_alone():
    """resnet8 (BatchNorm in every block): each job's running statistics stay its own."""
    data = load_dataset("fake", "/unused", False, False, {"shape": [3, 32, 32], "num_train": 64, "num_test": 32})
    jobs = JOBS[:2]

    def resnet8(seed):
        torch.manual_seed(seed)
        return build_model("resnet8", 10, (3, 32, 32), {})

    recipe = lambda job: Recipe(epochs=2, batch_size=32, optimizer="sgd", lr=20 * job["lr"],  # noqa: E731
                                weight_decay=5e-4, seed=job["seed"])
    alone = [resnet8(job["seed"]) for job in jobs]
    histories = [fit(model, data, recipe(job), CPU) for model, job in zip(alone, jobs)]
    members = [Member(resnet8(job["seed"]), recipe(job)) for job in jobs]
    fit_group(members, data, CPU)
    for model, history, member in zip(alone, histories, members):
        for expected, got in zip(history, member.history):
            assert all(_close(expected[k], got[k]) for k in ("train_loss", "test_acc", "lr")), (expected, got)
        stats = {k: v for k, v in model.state_dict().items() if "running" in k}
        assert stats and all(torch.allclose(v, member.model.state_dict()[k], rtol=1e-4, atol=1e-5)
                             for k, v in stats.items())
    assert not torch.equal(members[0].model.bn1.running_mean, members[1].model.bn1.running_mean)


@pytest.mark.parametrize("student,alone", [("resnet8", False), ("tv_resnet18", False),
                                           ("tv_mobilenet_v3_small", True), ("custom", True)])
def test_students_with_random_layers_run_alone(student, alone):
    """vmap refuses a model's dropout or stochastic depth ("random operation"): such a job runs alone, saying why."""
    register_schemas()
    configs = [OmegaConf.create(compose_plain("distill", ["dataset=fake", f"student.name={student}", f"seed={seed}"]))
               for seed in (0, 1)]
    groups = plan(configs, max_group_size=8)
    if alone:
        assert [g.jobs for g in groups] == [[0], [1]] and "may hold random layers" in groups[0].alone_because
    else:
        assert [(g.jobs, g.alone_because) for g in groups] == [([0, 1], None)]


class StopAfter:
    def __init__(self, n):
        self.n = n

    def __call__(self):
        self.n -= 1
        return self.n <= 0


def test_a_group_stopped_mid_epoch_resumes_from_each_jobs_last_pt():
    data = _data()
    logits = _teacher_logits(data)

    def members(states=None):
        return [Member(_student("cnn1d", j["seed"] + 10 * (states is not None)), _recipe(j, "adamw"),
                       (j["T"], 1 - j["alpha"], j["alpha"]), checkpoint=saved[i].append, state=states and states[i])
                for i, j in enumerate(JOBS)]

    saved = [[] for _ in JOBS]
    reference = members()
    fit_group(reference, data, CPU, teacher_logits=logits)
    saved = [[] for _ in JOBS]
    with pytest.raises(Interrupted):
        fit_group(members(), data, CPU, teacher_logits=logits, stop=StopAfter(7))  # 5 steps per epoch: mid epoch 2
    resumed = members([s[-1] for s in saved])
    assert all(s[-1]["epoch"] == 1 and s[-1]["step"] == 2 for s in saved)
    fit_group(resumed, data, CPU, teacher_logits=logits)
    for expected, got in zip(reference, resumed):
        assert [r["train_loss"] for r in got.history] == [r["train_loss"] for r in expected.history]
        assert all(torch.equal(a, b) for a, b in zip(expected.model.state_dict().values(),
                                                        got.model.state_dict().values()))


# --- the launcher, through the real CLI -----------------------------------------------------------

def _rows(run_dir):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in metric_rows(run_dir)]


def test_stacked_sweep_groups_what_it_can_writes_every_jobs_outputs_and_matches_a_run_alone(workdir):
    run = kdrun(workdir, "distill", "-m", "hydra/launcher=stacked", *FAST, "epochs=2", "T=2,4", "loss=kd,ls")
    assert run.returncode == 0, run.stderr
    out = run.stdout + run.stderr
    assert "2 in 1 stacked group(s), 2 alone" in out and "runs alone (loss=ls" in out
    jobs = run_dirs(workdir, "distill-sweep")
    assert len(jobs) == 4
    for job in jobs:
        assert (job / ".hydra" / "config.yaml").is_file() and (job / "distill.log").is_file()
        assert [r["epoch"] for r in metric_rows(job)] == [1, 2]
        result = summary(job)
        assert {"test_acc", "best_test_acc", "latency", "teacher", "speedup", "train_seconds"} <= set(result)
        weights = read_weights(job / "checkpoint.pt")  # loadable alone, like any student's
        model = build_model(weights.arch, weights.num_classes, weights.input_shape, weights.arch_kwargs)
        load_weights(model, weights.state_dict, "stacked job")
        assert weights.format == "kdrun" and sum(p.numel() for p in model.parameters()) == result["params"]
    stacked = [j for j in jobs if summary(j)["loss"] == "kd"]
    assert all("student epoch 2" in (j / "distill.log").read_text() for j in stacked)
    assert (workdir / "outputs").glob("distill-sweep/*/report.md")

    alone = kdrun(workdir, "distill", *FAST, "epochs=2", "T=4", f"hydra.run.dir={workdir / 'alone'}")
    assert alone.returncode == 0, alone.stderr
    [twin] = [j for j in stacked if summary(j)["T"] == 4.0]
    for expected, got in zip(_rows(workdir / "alone"), _rows(twin)):
        assert expected.keys() == got.keys()
        assert all(_close(expected[k], got[k]) for k in expected), (expected, got)


def test_sigterm_stops_a_stacked_group_and_resume_trains_it_stacked_again(workdir):
    """Jobs 0-2 (1 epoch) finish; the group of jobs 3-5 (3 epochs) is stopped mid-epoch; job 5's last.pt is
    put back to its end of epoch 1, as a kill between two jobs' epoch-end checkpoints leaves it; job 0 is
    made a failed attempt. The resume leaves 1 and 2 alone, restarts 0 afresh, trains 3 and 4 stacked from
    their mid-epoch state and 5 alone (its own point), and each ends as the uninterrupted sweep's twin does."""
    slow = [a for a in FAST if not a.startswith("teacher.")] + ["dataset.kwargs.num_train=20000"]
    sweep = ["train-student", "-m", "hydra/launcher=stacked", *slow]
    job = start_kdrun(workdir, *sweep, "epochs=1,3", "seed=0,1,2")  # the first override varies slowest
    jobs = lambda: run_dirs(workdir, "train_student-sweep")  # noqa: E731
    wait_until(lambda: len(jobs()) == 6 and all((d / "last.pt").exists() for d in jobs()[3:]), job)
    epoch_one = (jobs()[5] / "last.pt").read_bytes()
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=HANG_GUARD)
    assert job.returncode == 143, err
    assert "stacked group of 3 interrupted" in err and "Traceback" not in err
    sweep_dir = jobs()[0].parent
    assert f"resume the sweep with: kdrun train-student resume={sweep_dir}" in err
    for run_dir in jobs()[3:]:
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "interrupted" and status["resume"].endswith(f"resume={run_dir}")
        assert (run_dir / "last.pt").is_file() and not (run_dir / "summary.json").exists()
    (jobs()[5] / "last.pt").write_bytes(epoch_one)
    failed, before = jobs()[0], _rows(jobs()[0])
    for name in ("summary.json", "checkpoint.pt", "last.pt"):
        (failed / name).unlink(missing_ok=True)  # a finished job keeps no last.pt (keep_last=false)
    (failed / "status.json").write_text('{"status": "failed", "error": "a failed attempt"}')
    finished = [(d / "summary.json").stat().st_mtime_ns for d in jobs()[1:3]]

    resumed = kdrun(workdir, "train-student", f"resume={sweep_dir}")
    assert resumed.returncode == 0, resumed.stderr
    out = resumed.stdout + resumed.stderr
    assert "2 of 6 job(s) finished; running 0, 3, 4, 5" in out and "kdrun: job 3:" not in out
    assert "Launching 4 jobs: 2 in 1 stacked group(s), 2 alone" in out and "Training 2 jobs as one stacked model" in out
    assert "#0 runs alone" in out and "#5 runs alone" in out  # 5's start differs from 3's and 4's
    assert [(d / "summary.json").stat().st_mtime_ns for d in jobs()[1:3]] == finished, "finished jobs are left alone"
    assert not (failed / "status.json").exists() and len(_rows(failed)) == 1, "a restart clears the failed attempt"
    assert all(_close(before[0][k], _rows(failed)[0][k]) for k in before[0])
    assert "6 run(s) in 2 row(s)" in out, "one row per epochs value: a resumed job is no other setting"
    reference = kdrun(workdir, *sweep, "epochs=3", "seed=0,1,2", f"hydra.sweep.dir={workdir / 'reference'}")
    assert reference.returncode == 0, reference.stderr
    for number, run_dir in enumerate(jobs()[3:]):
        expected, got = _rows(workdir / "reference" / str(number)), _rows(run_dir)
        assert [r["epoch"] for r in got] == [1, 2, 3] and summary(run_dir)["seed"] == number
        assert all(_close(a[k], b[k]) for a, b in zip(expected, got) for k in a), (expected, got)
