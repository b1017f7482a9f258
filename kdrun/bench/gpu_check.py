"""`make gpu-check`: the CUDA path of kdrun, measured in one prepared run (under 8 minutes on one GPU).

On CIFAR-shaped fake data, resnet32x4 -> resnet8x4 and resnet56 -> resnet20, side by side: the
student alone, KD with the teacher's logits cached, KD with the teacher live every batch, a
feature method, torch.compile on top of cached KD, and a bare PyTorch loop; then the streamed
data path (DataLoader workers, pinned memory on CUDA) against tensors on the device; and with two
GPUs visible, a 2-process DDP run against one process. kdrun's CUDA path is bf16 autocast and
channels_last throughout. It prints images/s per setting and writes outputs/bench/gpu-check-<time>.json.
`--smoke` runs every step at toy sizes on whatever device there is (the CPU in CI, inside
`make test`), so the check cannot rot between the sessions that have a GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from kdrun.bench.epochs import run_bench, run_streaming_bench, show, show_streaming, write_record
from kdrun.core.console import console

PAIRS = ("cifar", "cifar_resnet56")
FULL = {"sizes": {"num_train": 10_000, "num_test": 2_000, "batch_size": 128}, "epochs": 3, "rounds": 2,
        "images": 5_000, "workers": 8}
SMOKE = {"sizes": {"num_train": 32, "num_test": 16, "batch_size": 16}, "epochs": 2, "rounds": 1,
         "images": 40, "workers": 1}


def ddp_check(gpus: int, sizes: dict, epochs: int, workdir: Path) -> dict:
    """Wall time of one distill run on 1 process and on 2 (torchrun), or why it was skipped."""
    if gpus < 2:
        return {"skipped": f"{gpus} GPU(s) visible; DDP needs 2"}
    data = ["dataset=fake", "dataset.kwargs.shape=[3,32,32]", "dataset.kwargs.num_classes=100",
            f"dataset.kwargs.num_train={sizes['num_train']}"]
    args = ["distill", *data, "teacher=resnet32x4", "student=resnet8x4", "teacher.train.epochs=1", f"epochs={epochs}",
            f"optim.batch_size={sizes['batch_size']}", "progress=false", "device=cuda"]
    walls = {}
    for label, launcher in (("1 process", [sys.executable, "-m", "kdrun"]),
                            ("2 processes (torchrun)", [sys.executable, "-m", "torch.distributed.run",
                                                        "--nproc_per_node=2", "-m", "kdrun"])):
        started = time.perf_counter()
        subprocess.run([*launcher, *args, f"hydra.run.dir={workdir / label.split()[0]}"], cwd=workdir, check=True,
                       capture_output=True)
        walls[label] = time.perf_counter() - started
    return {"wall_seconds": walls}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdrun.bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes, any device: proves every step still runs")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    on_cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    stamp = f"{datetime.now():%Y-%m-%d_%H-%M-%S_%f}"
    record = {"device": torch.cuda.get_device_name(0) if on_cuda else "cpu", "torch": torch.__version__,
              "smoke": args.smoke, "pairs": [], "compile": on_cuda or not args.smoke}
    for pair in PAIRS:  # torch.compile only where it is worth its compile time: on the GPU, or a full CPU check
        record["pairs"].append(run_bench(pair, args.device, plan["epochs"], plan["rounds"], compile=record["compile"],
                                         sizes=plan["sizes"]))
        show(record["pairs"][-1])
    record["streaming"] = run_streaming_bench(args.device, plan["epochs"], plan["rounds"],
                                              min(plan["workers"], os.cpu_count() or 1), plan["images"])
    show_streaming(record["streaming"])
    workdir = Path("outputs/bench") / f"gpu-check-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    record["ddp"] = ddp_check(torch.cuda.device_count() if on_cuda else 0, plan["sizes"], plan["epochs"], workdir)
    console.print(f"DDP: {record['ddp']}")
    write_record(record, f"gpu-check-{stamp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
