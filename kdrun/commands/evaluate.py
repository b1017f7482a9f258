"""`kdrun evaluate MODEL [dataset=NAME dataset.KEY=VALUE ...]`: a kdrun checkpoint (or a run dir holding one)
or an exported ONNX file, scored on a dataset's test split, in its own run dir.

Written to outputs/evaluate/<time>/ (or --out): summary.json (accuracy, top-5 where there are at least 5
classes, per-class accuracy, the confusion matrix, latency alone under the latency protocol) and
confusion_matrix.png. The dataset defaults to the one the model records; its config is conf/dataset/NAME.yaml
with the `dataset.*` overrides on top, checked by the same typed schema as a run's.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

import kdrun
from kdrun.commands.arguments import OneLineParser
from kdrun.core.errors import KdrunError
from kdrun.core.runtime import set_threads
from kdrun.data import load_dataset
from kdrun.deploy.export import metadata_of
from kdrun.deploy.metadata import class_names
from kdrun.deploy.runtime import Session, check_input_shape, predictions
from kdrun.deploy.scores import plot_confusion, scores
from kdrun.measure.latency import Protocol, measure_forwards
from kdrun.models.checkpoint import rebuild_model
from kdrun.run.config import DatasetConfig, config_dir
from kdrun.run.rundir import CHECKPOINT, owned, write_summary
from kdrun.run.validate import validate_dataset

CONFUSION_PNG = "confusion_matrix.png"


def parser() -> argparse.ArgumentParser:
    result = OneLineParser(
        prog="kdrun evaluate", description="Score a kdrun checkpoint (or run dir) or an ONNX file on a dataset's "
        "test split: accuracy, top-5, per-class accuracy, confusion matrix, latency; in its own run dir.")
    result.add_argument("model", type=Path, metavar="MODEL", help="checkpoint.pt, a run dir holding one, or a .onnx file")
    result.add_argument("overrides", nargs="*", metavar="dataset=NAME",
                        help="the dataset (default: the one the model records) and dataset.KEY=VALUE options")
    result.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="the run dir to write (default: outputs/evaluate/<time>)")
    result.add_argument("--batch-size", type=int, default=256, metavar="N", help="the larger batch timed (default 256)")
    result.add_argument("--threads", type=int, default=0, metavar="N", help="intra-op threads, 0: what fits")
    return result


def dataset_config(overrides: list[str], recorded: str | None) -> Any:
    """conf/dataset/NAME.yaml under the typed schema, with the `dataset.*` overrides on top."""
    name, options = recorded, []
    for override in overrides:
        key, equals, value = override.partition("=")
        if not equals or not (key == "dataset" or key.startswith("dataset.")):
            raise KdrunError(f"'{override}' is not a dataset override; write dataset=NAME or dataset.KEY=VALUE, "
                             "e.g. dataset=mnist1d dataset.data_dir=~/data")
        if key == "dataset":
            name = value
        else:
            options.append(f"{key.removeprefix('dataset.')}={value}")
    if name is None:
        raise KdrunError("the model records no dataset; pass dataset=NAME (and dataset.data_dir=DIR)")
    path = config_dir() / "dataset" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise KdrunError(f"unknown dataset '{name}'; choose one of: {known}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(path), OmegaConf.from_dotlist(options))
    except OmegaConfBaseException as error:
        raise KdrunError(f"bad dataset override: {str(error).splitlines()[0]}") from None
    validate_dataset(cfg)
    return cfg


def torch_model(path: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """A kdrun checkpoint's model as a forward function, and what the file records (arch, dataset, shape)."""
    model, weights = rebuild_model(path)

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(inputs)

    return forward, {"format": "kdrun checkpoint", "arch": weights.arch, "dataset": weights.dataset,
                     "input_shape": list(weights.input_shape), "num_classes": weights.num_classes}


def onnx_model(path: Path) -> tuple[Session, dict[str, Any]]:
    session = Session(path)
    recorded = metadata_of(path)
    return session, {"format": "onnx", "arch": recorded.get("arch"), "dataset": recorded.get("dataset"),
                     "input_shape": session.input_shape, "num_classes": recorded.get("num_classes")}


def check_fits(source: dict[str, Any], data: Any, path: Path) -> None:
    """One line when the model's input shape or class count does not fit the dataset."""
    check_input_shape(path, source["input_shape"], data.input_shape, data.name)
    if source["num_classes"] not in (None, data.num_classes):
        raise KdrunError(f"{path} predicts {source['num_classes']} classes but dataset '{data.name}' has "
                         f"{data.num_classes}; pass the dataset the model was trained for")


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    path = args.model.expanduser().resolve()
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise KdrunError(f"{path} is not a file; pass a kdrun checkpoint, a run dir holding {CHECKPOINT}, "
                         "or an .onnx file")
    if args.batch_size < 1:
        raise KdrunError(f"--batch-size must be >= 1 (got {args.batch_size})")
    threads = set_threads(args.threads)
    is_onnx = path.suffix == ".onnx"
    forward, source = onnx_model(path) if is_onnx else torch_model(path)
    d = dataset_config(args.overrides, source["dataset"])
    data = load_dataset(d.name, d.data_dir, d.download, False, OmegaConf.to_container(d.kwargs, resolve=True),
                        image_size=d.image_size, workers=d.workers).to(torch.device("cpu"))
    check_fits(source, data, path)
    run_dir = (args.out.expanduser().resolve() if args.out else
               Path.cwd() / "outputs" / "evaluate" / f"{datetime.now():%Y-%m-%d_%H-%M-%S_%f}")
    run_dir.mkdir(parents=True, exist_ok=True)
    with owned(run_dir):
        run_forward = forward.logits if is_onnx else forward
        logits, labels = predictions(run_forward, data.test_batches(torch.device("cpu")))
        names = class_names(data)
        result = scores(logits, labels, names)
        timed = measure_forwards({"model": forward}, data.input_shape, torch.device("cpu"),
                                 Protocol(batch_size=args.batch_size))
        plot_confusion(result["confusion_matrix"], names, run_dir / CONFUSION_PNG,
                       f"{path.name} on {data.name} test: {100 * result['test_acc']:.2f}%")
        write_summary(run_dir, {"command": "evaluate", "model_file": str(path), **source, "dataset": data.name,
                                **result, "latency": timed["latency"]["model"], "threads": threads.threads,
                                "kdrun_version": kdrun.__version__, "torch_version": torch.__version__})
    top5 = f", top-5 {100 * result['top5_acc']:.2f}%" if "top5_acc" in result else ""
    print(f"kdrun evaluate: {path.name} on {data.name} ({result['examples']} test examples): accuracy "
          f"{100 * result['test_acc']:.2f}%{top5}, batch-1 {timed['latency']['model']['batch1_ms_median']:.3f} ms "
          f"({'ONNX Runtime' if is_onnx else 'PyTorch eager'}, {threads.threads} threads)\nwritten: {run_dir}")
    return 0
