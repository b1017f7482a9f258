"""ONNX models under ONNX Runtime: a session with recorded threads, its logits, accuracy and the check
against PyTorch.

Sessions run on the CPU execution provider with as many intra-op threads as torch uses in this
process (kdrun.core.runtime set them to fit the machine), so eager and ONNX Runtime times compare
like for like; both thread counts are recorded with the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from kdrun.core.errors import KdrunError
from kdrun.deploy.extra import require

PROVIDER = "CPUExecutionProvider"


class Session:
    """An ONNX Runtime session of one model file, called like a model: float32 batch in, logits out."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings are about graph rewrites, not the user's model
        try:
            self.session = ort.InferenceSession(str(path), options, providers=[PROVIDER])
        except Exception as error:  # noqa: BLE001 - onnxruntime's Fail/InvalidGraph/... types
            raise KdrunError(f"ONNX Runtime cannot load {path} ({str(error).splitlines()[0][:160]}); "
                             "pass an ONNX model file") from None
        self.path, self.threads = path, options.intra_op_num_threads
        self.input = self.session.get_inputs()[0]

    @property
    def input_shape(self) -> list[Any]:
        """The model's input shape without the batch dimension (ints, or names of dynamic dimensions)."""
        return list(self.input.shape[1:])

    def __call__(self, inputs: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {self.input.name: inputs.numpy()})[0]

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self(inputs.detach().float().cpu().contiguous()))


def check_input_shape(path: Path, takes: list[Any], input_shape: tuple[int, ...], dataset: str) -> None:
    """One line if a model file taking `takes` (without the batch; a non-int is a dynamic dimension) cannot be
    fed the dataset's examples of `input_shape`."""
    fixed = [d if isinstance(d, int) else None for d in takes]
    if len(fixed) != len(input_shape) or any(d is not None and d != s for d, s in zip(fixed, input_shape)):
        raise KdrunError(f"{path} takes inputs of shape [batch, {', '.join(map(str, takes))}] but dataset "
                         f"'{dataset}' gives [batch, {', '.join(map(str, input_shape))}]; pass the dataset the "
                         "model was trained for")


def max_abs_difference(model: nn.Module, session: Session, inputs: torch.Tensor) -> float:
    """The largest |ONNX Runtime logit - PyTorch logit| on `inputs` (CPU, float32, eval mode)."""
    model = model.cpu().float().eval()
    inputs = inputs.detach().float().cpu()
    with torch.inference_mode():
        expected = model(inputs)
    return float((session.logits(inputs) - expected).abs().max())


def predictions(forward: Callable[[torch.Tensor], torch.Tensor],
                batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every batch, on the CPU."""
    logits, labels = [], []
    for inputs, targets in batches:
        logits.append(forward(inputs.detach().float().cpu()))
        labels.append(targets.cpu())
    return torch.cat(logits), torch.cat(labels)


def accuracy(session: Session, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of the ONNX model over `batches` (e.g. a dataset's test batches)."""
    logits, labels = predictions(session.logits, batches)
    return (logits.argmax(1) == labels).float().mean().item()
