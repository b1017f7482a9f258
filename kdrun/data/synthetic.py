"""Generated image folders: real JPEG/PNG files in ImageFolder's layout (`DIR/{train,val}/<class>/`).

For the streaming benchmark and for tests, which cannot download anything. Each class has its
own mean colour plus noise, so a model can learn the classes and accuracy moves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_image_folder(root: Path, classes: int = 3, train_per_class: int = 6, val_per_class: int = 3,
                       size: tuple[int, int] = (40, 48), formats: tuple[str, ...] = ("jpg", "png"),
                       seed: int = 0) -> Path:
    """Write the folder (formats alternate file by file) and return `root`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, (classes, 3))
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(colours[label] + rng.normal(0, 30, (*size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:05d}.{formats[i % len(formats)]}")
    return root
