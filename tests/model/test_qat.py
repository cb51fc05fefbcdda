from pathlib import Path

import numpy as np
import pytest

from model.data import FASHION_SPEC, Dataset, Split
from model.train import TrainConfig


@pytest.mark.slow
def test_pruning_preserving_qat_gives_sparse_integer_only_model(tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from model.architectures import vgg_bn
    from model.prune import magnitude_prune
    from model.qat import quantize_aware
    from model.quantize import float_tensors, to_int8_tflite

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (256, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 256)
    data = Dataset("random", [str(i) for i in range(10)], Split(x, y), Split(x[:64], y[:64]), Split(x[:64], y[:64]),
                   FASHION_SPEC)
    cfg = TrainConfig(epochs=1, batch_size=32, augment=False, threads=1)
    pruned, _ = magnitude_prune(vgg_bn((28, 28, 1), 10, stages=[[8, 8], [16]]), data, 0.75, cfg, tmp_path / "p")
    content = to_int8_tflite(quantize_aware(pruned, data, cfg, tmp_path / "q"), x, samples=32)
    assert float_tensors(content) == []
    tensors = _constant_tensors(Interpreter(model_content=content))
    kernels = [k for k in tensors if k.dtype == np.int8 and k.ndim == 4 and k.shape[0] > 1 and k.size >= 500]
    assert kernels and all(np.mean(k == 0) >= 0.7 for k in kernels), [float(np.mean(k == 0)) for k in kernels]


def _constant_tensors(interp) -> list[np.ndarray]:
    interp.allocate_tensors()
    out = []
    for t in interp.get_tensor_details():
        try:
            out.append(interp.get_tensor(t["index"]))
        except ValueError:  # activations (and delegated tensors) hold no data outside invoke()
            continue
    return out
