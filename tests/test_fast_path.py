"""Issue 3's fast-path switches: channels_last layout on CUDA and an optional torch.compile."""

import torch

from kdrun.core.runtime import memory_format
from kdrun.data import TensorData
from kdrun.data.augment import crop_flip
from kdrun.models import build_model
from kdrun.train.engine import fit
from kdrun.train.recipe import Recipe

CPU = torch.device("cpu")


def test_channels_last_only_for_image_batches_on_cuda():
    assert memory_format(torch.device("cuda"), 4) == torch.channels_last
    assert memory_format(torch.device("cuda"), 3) == torch.preserve_format  # 1-D signals
    assert memory_format(CPU, 4) == torch.preserve_format


def test_crop_flip_keeps_a_channels_last_batch_channels_last_with_the_same_values():
    x = torch.randn(6, 3, 8, 8)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    plain = crop_flip(x, torch.Generator().manual_seed(1), 2, True)
    fast = crop_flip(nhwc, torch.Generator().manual_seed(1), 2, True)
    assert fast.is_contiguous(memory_format=torch.channels_last) and not fast.is_contiguous()
    assert torch.equal(plain, fast)


def test_compiled_training_matches_eager_training():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 1, 12, generator=generator), torch.randint(0, 10, (128,), generator=generator)
    data = TensorData("toy", x, y, x[:32], y[:32], 10)
    histories, weights = [], []
    for compile in (False, True):
        torch.manual_seed(0)
        model = build_model("mlp", 10, (1, 12), {"hidden": [8]})
        histories.append(fit(model, data, Recipe(epochs=2, batch_size=32, compile=compile), CPU))
        weights.append(model.state_dict())
    assert weights[0].keys() == weights[1].keys(), "the trained module, not the compiled wrapper, is what we save"
    for eager, compiled in zip(*histories):
        assert abs(eager["train_loss"] - compiled["train_loss"]) < 1e-4
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-4) for k in weights[0])
