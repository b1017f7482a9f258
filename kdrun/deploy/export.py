"""A PyTorch model as an ONNX file: torch.export, then torch.onnx's exporter, with kdrun's metadata.

The batch dimension is dynamic, everything else fixed to the dataset's input shape. The exporter's
own errors are many lines long; an op it cannot convert becomes one line naming the op and the module
that calls it (read from the exported graph's `nn_module_stack`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from torch import nn

from kdrun.core.errors import KdrunError, first_line
from kdrun.deploy.extra import quiet, require

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
METADATA_PREFIX = "kdrun."


def to_onnx(model: nn.Module, input_shape: tuple[int, ...], metadata: dict[str, Any]) -> bytes:
    """The serialized ONNX model of `model` with `metadata` in its metadata_props; `model` is moved to the CPU
    in float32 and eval mode (pass a copy to keep yours as it is)."""
    require("onnxscript")  # torch.onnx's exporter is built on it
    model = model.cpu().float().eval()
    sample = torch.randn(2, *input_shape)
    program = _exported(model, sample)
    try:
        with quiet():
            onnx_program = torch.onnx.export(program, (sample,), dynamo=True, verbose=False,
                                             input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    except Exception as error:  # noqa: BLE001 - the exporter raises several private types
        raise _conversion_error(error, program, model) from None
    proto = onnx_program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value if isinstance(value, str) else json.dumps(value)
    return proto.SerializeToString()


def _exported(model: nn.Module, sample: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export's graph of the model, its batch dimension dynamic."""
    try:
        with torch.no_grad():
            return torch.export.export(model, (sample,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as error:  # noqa: BLE001 - torch.export's user errors and graph breaks have many types
        raise KdrunError(f"torch.export cannot trace {type(model).__name__} for ONNX ({first_line(error, 160)}); "
                         "make its forward traceable (no data-dependent Python control flow)") from None


def _conversion_error(error: Exception, program: torch.export.ExportedProgram, model: nn.Module) -> KdrunError:
    """One line: which op the ONNX exporter could not convert, and in which module of the model."""
    text = " ".join(str(e) for e in _chain(error))
    found = re.search(r"OpOverload\(op='([\w.]+)'", text) or re.search(r"target=torch\.ops\.([\w.]+)", text)
    if not found:
        return KdrunError(f"the ONNX exporter failed on {type(model).__name__} ({first_line(error, 160)})")
    op = found.group(1).removesuffix(".default")
    return KdrunError(f"the ONNX exporter has no conversion for op {op} (called in {_module_of(program, op)}); "
                      "replace that op in the model with one ONNX supports, or leave export=false")


def _chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while error is not None and len(chain) < 20:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _module_of(program: torch.export.ExportedProgram, op: str) -> str:
    """The module path and class of the first graph node that calls `op`, e.g. "module 'head' (Cholesky)".
    The exporter decomposes the graph first (linalg_cholesky becomes linalg_cholesky_ex): so do we, to find it."""
    for graph in (program.graph, lambda: program.run_decompositions().graph):
        found = _caller(graph() if callable(graph) else graph, op)
        if found:
            return found
    return "the model's own forward"


def _caller(graph: torch.fx.Graph, op: str) -> str | None:
    for node in graph.nodes:
        if node.op == "call_function" and str(node.target).startswith(op):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, kind = list(stack.values())[-1]
                name = getattr(kind, "__name__", str(kind).rsplit(".", 1)[-1])
                return f"module '{path or 'the model'}' ({name})"
    return None


def metadata_of(onnx_bytes_or_path: Any) -> dict[str, Any]:
    """kdrun's metadata of an ONNX model (JSON values decoded)."""
    onnx = require("onnx")
    proto = onnx.load(str(onnx_bytes_or_path)) if not isinstance(onnx_bytes_or_path, bytes) \
        else onnx.load_from_string(onnx_bytes_or_path)
    found = {}
    for entry in proto.metadata_props:
        if entry.key.startswith(METADATA_PREFIX):
            try:
                found[entry.key.removeprefix(METADATA_PREFIX)] = json.loads(entry.value)
            except json.JSONDecodeError:
                found[entry.key.removeprefix(METADATA_PREFIX)] = entry.value
    return found


def opset_of(onnx_bytes: bytes) -> int:
    """The default-domain opset the exporter chose."""
    proto = require("onnx").load_from_string(onnx_bytes)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
