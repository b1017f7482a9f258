"""What an exported model says about its inputs and outputs: normalisation, class names, where it came from.

Stored in the ONNX file's metadata_props (keys `kdrun.*`) so a model that leaves kdrun can be fed
correctly: kdrun's datasets hand the model normalised float32 tensors, and a user outside kdrun must
apply the same normalisation to raw inputs.
"""

from __future__ import annotations

from typing import Any

import kdrun
from kdrun.data.stream import IMAGENET_MEAN, IMAGENET_STD
from kdrun.data.vision import CIFAR10, CIFAR100, FASHION_MNIST, MNIST

_PIXELS = "pixels scaled to [0, 1], then (x - mean) / std per channel, layout NCHW"
NORMALISATION: dict[str, dict[str, Any]] = {
    **{spec.name: {"mean": list(spec.mean), "std": list(spec.std), "applied_to": _PIXELS}
       for spec in (MNIST, FASHION_MNIST, CIFAR10, CIFAR100)},
    **{name: {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
              "applied_to": _PIXELS + ", after Resize(size*256/224) + CenterCrop(size)"}
       for name in ("imagenet", "image_folder")},
    "mnist1d": {"mean": None, "std": None, "applied_to": "the MNIST-1D generator's float signals as they are, "
                "shape (1, 40)"},
    "fake": {"mean": None, "std": None, "applied_to": "kdrun's synthetic standard-normal inputs as they are"},
}


def normalisation(dataset: str) -> dict[str, Any]:
    """How raw inputs become what the model takes, for kdrun's datasets (unknown: said so)."""
    return NORMALISATION.get(dataset, {"mean": None, "std": None, "applied_to": f"as kdrun's dataset '{dataset}' "
                                       "yields them (no normalisation recorded for it)"})


def class_names(data: Any) -> list[str]:
    """The dataset's class names where it has them (torchvision sets, image folders), else the indices."""
    names = getattr(data, "class_names", None)
    return list(names) if names else [str(i) for i in range(data.num_classes)]


def model_metadata(data: Any, arch: str, role: str) -> dict[str, Any]:
    """The `kdrun.*` metadata of one exported model."""
    return {"role": role, "arch": arch, "dataset": data.name, "input_shape": list(data.input_shape),
            "normalisation": normalisation(data.name), "class_names": class_names(data),
            "num_classes": data.num_classes, "kdrun_version": kdrun.__version__}
