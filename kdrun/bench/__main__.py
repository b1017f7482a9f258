"""`make bench` (`python -m kdrun.bench`): what a distillation epoch and a sweep cost, measured side by side.

The per-epoch scenarios (kdrun.bench.epochs) and a 4-student sweep with the teacher's outputs live
vs stored (`--pairs stored`, kdrun.bench.stored; alone: `python -m kdrun.bench --pairs stored`);
with --sweep, the README's 24-job sweep run serial / joblib / stacked (kdrun.bench.sweep); with
--trust, latency stability, threads under load, cold start and help time (kdrun.bench.trust); with
--deploy, eager PyTorch vs ONNX Runtime fp32 vs INT8 (kdrun.bench.deployed). Results print as tables of
ratios and are kept in
outputs/bench/<time>.json.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from kdrun.bench.epochs import PAIRS, STREAMING, run_bench, run_streaming_bench, show, show_streaming, write_record
from kdrun.bench.stored import STORED, run_stored_bench, show_stored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdrun.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["mnist1d", "cifar", "streaming", "stored"],
                        choices=[*PAIRS, "streaming", "stored"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run of a scenario; the first is a warm-up")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin passes over the scenarios")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile scenario (slow to compile)")
    parser.add_argument("--workers", type=int, default=STREAMING["workers"], help="DataLoader workers (streaming)")
    parser.add_argument("--images", type=int, default=STREAMING["images"], help="training images (streaming)")
    parser.add_argument("--stored-images", type=int, default=STORED["images"], help="training images (stored)")
    parser.add_argument("--sweep", action="store_true",
                        help="also the 24-job MNIST-1D sweep serial / joblib / stacked (minutes)")
    parser.add_argument("--sweep-epochs", type=int, default=100, help="epochs per job of --sweep (README: 100)")
    parser.add_argument("--sweep-args", nargs="*", default=[], help="extra overrides for --sweep's kdrun commands")
    parser.add_argument("--trust", action="store_true", help="also latency stability, threads under load, cold "
                        "start and help time (kdrun.bench.trust; minutes)")
    parser.add_argument("--deploy", action="store_true", help="also eager PyTorch vs ONNX Runtime fp32 vs INT8 "
                        "latency of the demo student and resnet8x4 (kdrun.bench.deployed; needs kdrun[deploy])")
    args = parser.parse_args(argv)
    stamp = f"{datetime.now():%Y-%m-%d_%H-%M-%S_%f}"
    results = []
    for pair in args.pairs:
        if pair == "stored":
            results.append(run_stored_bench(args.device, max(2, args.epochs), args.workers, args.stored_images))
            show_stored(results[-1])
            continue
        if pair == "streaming":
            results.append(run_streaming_bench(args.device, max(2, args.epochs), max(1, args.rounds), args.workers,
                                               args.images))
            show_streaming(results[-1])
            continue
        results.append(run_bench(pair, args.device, max(2, args.epochs), max(1, args.rounds), args.compile))
        show(results[-1])
    record = {"results": results}
    if args.sweep:
        from kdrun.bench.sweep import run_sweep_bench, show_sweep

        record["sweep"] = run_sweep_bench(Path("outputs/bench") / f"sweep-{stamp}", args.sweep_epochs, args.sweep_args)
        show_sweep(record["sweep"])
    if args.trust:
        from kdrun.bench.trust import run_trust_bench, show_trust

        record["trust"] = run_trust_bench(Path("outputs/bench") / f"trust-{stamp}")
        show_trust(record["trust"])
    if args.deploy:
        from kdrun.bench.deployed import run_deploy_bench, show_deploy

        record["deploy"] = run_deploy_bench()
        show_deploy(record["deploy"])
    write_record(record, stamp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
