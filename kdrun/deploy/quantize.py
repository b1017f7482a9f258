"""INT8 by post-training static quantization with ONNX Runtime's tools, calibrated on training batches.

Why ONNX Runtime's `quantize_static` and not PyTorch's PT2E flow: the file we ship is the ONNX model
and ONNX Runtime runs it, so quantizing the ONNX graph itself is what the deployed model gets (no
second export of a quantized PyTorch graph, whose int8 ops the ONNX exporter may or may not map), and
PT2E's quantizers have moved out of torch into torchao, one more dependency. Settings: QDQ format
(ONNX Runtime fuses QuantizeLinear/DequantizeLinear pairs into int8 kernels on CPU), weights int8
per output channel, activations uint8 per tensor, ranges by min/max over the calibration batches; the
float graph first goes through ORT's `quant_pre_process` (shape inference and fusions, as its docs advise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from kdrun.core.errors import KdrunError, first_line
from kdrun.deploy.extra import quiet, require

SETTINGS = {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ", "weights": "int8 per channel",
            "activations": "uint8 per tensor", "calibration": "MinMax"}


def calibration_batches(x_train: torch.Tensor, batches: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """`batches` batches of un-augmented training inputs (a seeded random choice) as float32 arrays."""
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:batches * batch_size]
    chosen = x_train.detach().cpu()[order].float()
    return [chunk.contiguous().numpy() for chunk in chosen.split(batch_size)]


def quantize_int8(fp32: Path, int8: Path, batches: list[np.ndarray], input_name: str) -> dict[str, Any]:
    """Write `int8` (a QDQ model) from the float model `fp32`, its ranges calibrated on `batches`."""
    quantization = require("onnxruntime.quantization")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.feed: Iterator[dict[str, np.ndarray]] = iter({input_name: b} for b in batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feed, None)

    prepared = int8.with_name(f".{int8.stem}.prepared.onnx")  # shape inference + graph fusions, as ORT advises
    try:
        shape_inference = require("onnxruntime.quantization.shape_inference")
        with quiet():
            shape_inference.quant_pre_process(str(fp32), str(prepared))
            quantization.quantize_static(str(prepared), str(int8), Reader(),
                                         quant_format=quantization.QuantFormat.QDQ,
                                         per_channel=True, activation_type=quantization.QuantType.QUInt8,
                                         weight_type=quantization.QuantType.QInt8,
                                         calibrate_method=quantization.CalibrationMethod.MinMax)
    except Exception as error:  # noqa: BLE001 - onnxruntime's quantizer raises plain and private errors alike
        raise KdrunError(f"INT8 quantization of {fp32.name} failed ({first_line(error, 160)}); "
                         "set deploy.int8=false to export the float model alone") from None
    finally:
        prepared.unlink(missing_ok=True)
    return {**SETTINGS, "calibration_batches": len(batches), "calibration_examples": sum(len(b) for b in batches)}
