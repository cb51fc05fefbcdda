from pathlib import Path

import numpy as np
import pytest

from model.data import FASHION_SPEC, Dataset, Split
from model.train import TrainConfig


def _tiny_data(n: int = 320) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    return Dataset("random", [str(i) for i in range(10)], Split(x, y), Split(x[:64], y[:64]), Split(x[:64], y[:64]),
                   FASHION_SPEC)


def _tiny_vgg():
    from model.architectures import vgg_bn

    return vgg_bn((28, 28, 1), 10, stages=[[8, 8], [16]])


@pytest.mark.slow
def test_magnitude_pruning_reaches_target_sparsity(tmp_path: Path) -> None:
    from model.prune import magnitude_prune

    cfg = TrainConfig(epochs=1, batch_size=32, augment=False, threads=1)
    pruned, report = magnitude_prune(_tiny_vgg(), _tiny_data(), 0.75, cfg, tmp_path)
    assert report["total"] >= 0.74
    assert all(s >= 0.7 for s in report["layers"].values())
    assert not any("prune" in layer.name for layer in pruned.layers)  # stripped


def test_structured_pruning_keeps_the_top_filters_and_thins_the_model() -> None:
    from model.structured import prune_channels

    model = _tiny_vgg()
    gamma = np.arange(8, dtype=np.float32)
    bn = model.get_layer("bn_0")
    bn.set_weights([gamma, *bn.get_weights()[1:]])
    thin, widths = prune_channels(model, 0.5)
    assert widths == [4, 4, 8]
    assert thin.count_params() < model.count_params() / 2.5
    np.testing.assert_array_equal(thin.get_layer("bn_0").gamma.numpy(), gamma[4:])


def test_structured_pruning_with_keep_one_is_exact() -> None:
    from model.structured import prune_channels

    model = _tiny_vgg()
    same, _ = prune_channels(model, 1.0, "l1")
    x = np.random.default_rng(1).integers(0, 256, (3, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(same(x)), rtol=1e-5, atol=1e-5)


def test_structured_pruning_refuses_non_plain_models() -> None:
    from common.errors import ConfigError
    from model.architectures import mobilenet_v2_style
    from model.structured import prune_channels

    with pytest.raises(ConfigError, match="not a plain CNN"):
        prune_channels(mobilenet_v2_style((28, 28, 1), 10, width=0.35), 0.5)
