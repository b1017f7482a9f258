"""MNIST-1D (Greydanus 2020), generated offline by the `mnist1d` package and cached as .npz.

Only the package's generator (`make_dataset`) is used, never its download/pickle path:
nothing is unpickled, and a fresh machine needs no network. Generation takes a few
seconds and happens once per set of generator options.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from kdrun.core.files import write_atomic
from kdrun.data.base import TensorData, register_dataset

log = logging.getLogger(__name__)
KEYS = ("x", "y", "x_test", "y_test")


def _generate(num_samples: int, train_split: float, generator_seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, generator_seed
    made = make_dataset(args)
    return {key: np.asarray(made[key]) for key in KEYS}


def _read(cache: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays; None if the cache is missing or damaged (it is then generated again).

    An unreadable cache (permissions) is not damaged: that error reaches the user with the path.
    """
    if not cache.exists():
        return None
    try:
        with np.load(cache, allow_pickle=False) as arrays:
            return {key: arrays[key] for key in KEYS}
    except PermissionError:
        raise
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file fails in zip, pickle or key lookup
        log.warning("%s is damaged (%s); generating it again", cache, type(error).__name__)
        return None


@register_dataset("mnist1d")
def mnist1d(root: Path, download: bool, augment: bool, num_samples: int = 5000, train_split: float = 0.8,
            generator_seed: int = 42) -> TensorData:
    cache = root / "mnist1d" / f"mnist1d_n{num_samples}_split{train_split}_seed{generator_seed}.npz"
    arrays = _read(cache)
    if arrays is None:
        arrays = _generate(num_samples, train_split, generator_seed)
        write_atomic(cache, lambda handle: np.savez(handle, **arrays))
    x, y, x_test, y_test = (arrays[k] for k in KEYS)
    as_signal = lambda a: torch.from_numpy(a).float().unsqueeze(1)  # noqa: E731  (N, 1, 40)
    return TensorData("mnist1d", as_signal(x), torch.from_numpy(y).long(), as_signal(x_test),
                      torch.from_numpy(y_test).long(), num_classes=10)
