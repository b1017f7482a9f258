"""MNIST-1D (Greydanus 2020), generated offline by the `mnist1d` package and cached as .npz.

Only the package's generator (`make_dataset`) is used, never its download/pickle path:
nothing is unpickled, and a fresh machine needs no network. Generation takes a few
seconds and happens once per set of generator options.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdrun.data import TensorData, register_dataset
from kdrun.rundir import write_atomic


def _generate(num_samples: int, train_split: float, generator_seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, generator_seed
    made = make_dataset(args)
    return {key: np.asarray(made[key]) for key in ("x", "y", "x_test", "y_test")}


@register_dataset("mnist1d")
def mnist1d(root: Path, download: bool, augment: bool, num_samples: int = 5000, train_split: float = 0.8,
            generator_seed: int = 42) -> TensorData:
    cache = root / "mnist1d" / f"mnist1d_n{num_samples}_split{train_split}_seed{generator_seed}.npz"
    if not cache.exists():
        arrays = _generate(num_samples, train_split, generator_seed)
        write_atomic(cache, lambda handle: np.savez(handle, **arrays))
    with np.load(cache, allow_pickle=False) as arrays:
        x, y, x_test, y_test = (arrays[k] for k in ("x", "y", "x_test", "y_test"))
    as_signal = lambda a: torch.from_numpy(a).float().unsqueeze(1)  # noqa: E731  (N, 1, 40)
    return TensorData("mnist1d", as_signal(x), torch.from_numpy(y).long(), as_signal(x_test),
                      torch.from_numpy(y_test).long(), num_classes=10)
