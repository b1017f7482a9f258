"""What published weights require of a dataset (kdrun.models.build_pretrained loads them: torchvision's weights
API for `tv_<name>`, `teacher.weights=IMAGENET1K_V2`; timm's for `timm_<name>`, `teacher.weights=pretrained`).

Such a model is the publisher's own architecture (no stem adapted to small inputs: the weights
fit the original one) with the publisher's number of classes, which must be the dataset's.
"""

from __future__ import annotations

from kdrun.core.errors import KdrunError


def check_pretrained_fits(model_name: str, classes: int, num_classes: int, input_shape: tuple[int, ...]) -> None:
    """The weights' classes must be the dataset's, and the inputs RGB images."""
    if classes != num_classes:
        raise KdrunError(f"{model_name} predicts {classes} classes but the dataset has {num_classes}; use it on a "
                         f"dataset with its {classes} classes (e.g. ImageNet), or train a teacher for this one")
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise KdrunError(f"{model_name} takes RGB images (3, height, width) but the dataset gives "
                         f"{tuple(input_shape)}; pick an RGB image dataset")
