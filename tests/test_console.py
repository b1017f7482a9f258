"""Off a terminal (CI logs, SLURM output files, `| tee`) the console is one line per epoch per run, unwrapped,
and a sweep's jobs one line each before its report."""

from __future__ import annotations

from conftest import kdrun

TINY = ["dataset=fake", "teacher.kwargs.channels=8", "teacher.train.epochs=2", "epochs=3", "threads=1",
        "latency.min_seconds=0.01", "latency.batch_size=16"]  # progress left on: off a terminal it draws nothing


def lines(run) -> list[str]:
    return (run.stdout + run.stderr).splitlines()


def test_a_3_epoch_distill_off_a_terminal_is_one_line_per_epoch_and_one_table(workdir):
    run = kdrun(workdir, "distill", *TINY)
    assert run.returncode == 0, run.stderr
    said = lines(run)
    assert [line.split(":")[0] for line in said if " epoch " in line] == \
        ["teacher epoch 1/2", "teacher epoch 2/2", "student epoch 1/3", "student epoch 2/3", "student epoch 3/3"]
    assert all("test acc" in line for line in said if " epoch " in line), "an epoch line is never wrapped"
    assert "" not in said and len(said) <= 24, "\n".join(said)
    assert sum(line.startswith("┏") for line in said) == 1, "one results table"


def test_a_long_run_shows_ten_epochs_on_the_console_and_every_epoch_in_its_log(tmp_path, capsys):
    """The console handler off a terminal (the one Hydra's job_logging builds) and a run's log file, fed the
    25 epoch lines of a run: the console shows every 3rd and the last, unwrapped; the file all 25."""
    import logging

    from kdrun.commands.record import epoch_line
    from kdrun.core.console import log_handler

    console, log_file = log_handler(), logging.FileHandler(tmp_path / "run.log")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers, root.level = [console, log_file], logging.INFO
    try:
        say = epoch_line("student", 25)
        for epoch in range(1, 26):
            say({"epoch": epoch, "train_loss": 0.5, "test_acc": 0.25, "seconds": 0.1})
    finally:
        root.handlers, root.level = saved
        log_file.close()
    shown = capsys.readouterr().out.splitlines()
    assert shown == [f"student epoch {e}/25: loss 0.5000, test acc 25.00% (0.1s)" for e in (3, 6, 9, 12, 15, 18,
                                                                                           21, 24, 25)]
    assert (tmp_path / "run.log").read_text().count("student epoch ") == 25


def test_a_3_job_stacked_sweep_off_a_terminal_fits_one_screen(workdir):
    run = kdrun(workdir, "distill", "-m", *TINY, "hydra/launcher=stacked", "T=1,2,4")
    assert run.returncode == 0, run.stderr
    said = lines(run)
    assert sum("stacked group of 3 (mlp): epoch" in line for line in said) == 3
    assert sum(line.startswith("kdrun distill: student") for line in said) == 3, "each job one line"
    assert sum(line.startswith("teacher epoch") for line in said) == 2
    assert "" not in said and len(said) <= 40, "\n".join(said)
