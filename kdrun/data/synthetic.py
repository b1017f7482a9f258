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


def main(argv: list[str] | None = None) -> int:
    """`python -m kdrun.data.synthetic DIR`: a small folder to try `dataset=image_folder` with."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kdrun.data.synthetic", description=main.__doc__)
    parser.add_argument("root", type=Path, help="where to write DIR/train/<class>/ and DIR/val/<class>/")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--val-per-class", type=int, default=10)
    args = parser.parse_args(argv)
    root = write_image_folder(args.root.expanduser().resolve(), args.classes, args.train_per_class, args.val_per_class)
    print(f"wrote {args.classes} classes of JPEG/PNG images under {root}/train and {root}/val")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
