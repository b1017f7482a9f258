"""resume=RUN_DIR epochs=N: a finished run trained on to N epochs, its schedule recomputed and recorded."""

from __future__ import annotations

import pytest
import torch
from conftest import kdrun, metric_rows, summary

from kdrun.train.recipe import stretch_schedule

TINY = ["dataset=fake", "progress=false", "latency.min_seconds=0.01", "latency.batch_size=16", "threads=1",
        "checkpoint_min_seconds=0"]


def test_extending_3_to_5_epochs_equals_a_5_epoch_run_with_a_constant_schedule(workdir):
    """A constant schedule does not depend on the length: epochs 4-5 of the extended run are a 5-epoch run's,
    bit for bit (weights, optimiser moments and random streams come from last.pt)."""
    extended, five = workdir / "outputs/extended", workdir / "outputs/five"
    for run_dir, epochs, keep_last in ((extended, 3, "true"), (five, 5, "false")):
        run = kdrun(workdir, "train-student", *TINY, "optim.schedule=constant", f"epochs={epochs}",
                    f"keep_last={keep_last}", f"hydra.run.dir={run_dir}")
        assert run.returncode == 0, run.stderr
    assert not (five / "last.pt").exists() and (five / "checkpoint.pt").exists(), "finished: last.pt removed"
    no_state = kdrun(workdir, "train-student", f"resume={five}", "epochs=6")
    assert no_state.returncode != 0 and f"student.init={five / 'checkpoint.pt'}" in no_state.stderr
    refused = kdrun(workdir, "train-student", f"resume={extended}", "epochs=3")
    assert refused.returncode != 0 and "has 3 epochs; epochs=3 would not extend it" in refused.stderr
    run = kdrun(workdir, "train-student", f"resume={extended}", "epochs=5")
    assert run.returncode == 0, run.stderr
    assert metric_rows(extended) == [{**row, "seconds": mine["seconds"]}
                                     for row, mine in zip(metric_rows(five), metric_rows(extended))]
    result = summary(extended)
    assert result["epochs"] == 5 and result["test_acc"] == summary(five)["test_acc"]
    assert result["extended"] == {"from_epochs": 3, "to_epochs": 5, "schedule": "constant: as a 5-epoch run's"}


def test_a_cosine_schedule_stretched_to_5_epochs_gives_the_5_epoch_learning_rates_from_epoch_4():
    def cosine(epochs):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)

    (short_opt, short), (long_opt, long) = cosine(3), cosine(5)
    for _ in range(3):
        short_opt.step(), short.step(), long_opt.step(), long.step()
    stretch_schedule(short, 5)
    for _ in range(2):
        assert short_opt.param_groups[0]["lr"] == pytest.approx(long_opt.param_groups[0]["lr"], rel=1e-12)
        assert short.get_last_lr() == pytest.approx(long.get_last_lr(), rel=1e-12)
        short_opt.step(), short.step(), long_opt.step(), long.step()
