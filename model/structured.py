"""Structured (channel) pruning of the plain CNNs in ``model.architectures``.

Each conv layer keeps its most important filters (|BN gamma| or L1 norm of the filter), a thinner model is
rebuilt with the same builder, and the kept slices of every weight are copied across: a conv's output
channels, its batchnorm, and the input channels of whatever consumes it (next conv, or the dense head).
Unlike magnitude pruning this removes real multiply-adds, so LiteRT runs faster on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import ConfigError
from model.architectures import plain_cnn


@dataclass(frozen=True)
class PlainLayout:
    stages: list[list[int]]
    batchnorm: bool
    head: str
    hidden: int
    dropout: float
    name: str
    stem_stride: int = 1


def read_layout(model: Any) -> PlainLayout:
    """Recover the ``plain_cnn`` arguments from a built model (layers are named conv_i, bn_i, pool_s...)."""
    names = {layer.name: layer for layer in model.layers}
    if "conv_0" not in names:
        raise ConfigError(f"model {model.name!r} is not a plain CNN (no conv_0 layer); structured pruning "
                          "supports baseline-cnn, vgg-bn and camera-vgg.")
    stages: list[list[int]] = [[]]
    for layer in model.layers:
        if layer.name.startswith("pool_") and stages[-1]:
            stages.append([])  # the flatten head's trailing pool leaves an empty stage, dropped below
        elif layer.name.startswith("conv_"):
            stages[-1].append(int(layer.filters))
    stages = [s for s in stages if s]
    return PlainLayout(
        stages=stages, batchnorm="bn_0" in names, head="gap" if "gap" in names else "flatten",
        hidden=int(names["hidden"].units) if "hidden" in names else 0,
        dropout=float(names["dropout"].rate) if "dropout" in names else 0.0, name=model.name,
        stem_stride=int(names["conv_0"].strides[0]))


def filter_importance(model: Any, i: int, criterion: str) -> np.ndarray:
    if criterion == "bn-gamma" and any(layer.name == f"bn_{i}" for layer in model.layers):
        return np.abs(model.get_layer(f"bn_{i}").gamma.numpy())
    kernel = model.get_layer(f"conv_{i}").kernel.numpy()
    return np.abs(kernel).sum(axis=(0, 1, 2))


def keep_indices(importance: np.ndarray, keep: float, minimum: int = 4) -> np.ndarray:
    n = max(minimum, round(len(importance) * keep))
    return np.sort(np.argsort(-importance, kind="stable")[:n])


def prune_channels(model: Any, keep: float, criterion: str = "bn-gamma") -> tuple[Any, list[int]]:
    """Return a thinner copy of ``model`` keeping ``keep`` of every conv's filters, and the new widths."""
    if not 0 < keep <= 1:
        raise ConfigError(f"--keep must be in (0, 1], got {keep}.")
    layout = read_layout(model)
    n_conv = sum(len(s) for s in layout.stages)
    kept = [keep_indices(filter_importance(model, i, criterion), keep) for i in range(n_conv)]
    widths = iter(len(k) for k in kept)
    stages = [[next(widths) for _ in stage] for stage in layout.stages]
    thin = plain_cnn(model.input_shape[1:], int(model.output_shape[-1]), stages, layout.batchnorm,
                     layout.head, layout.hidden, layout.dropout, name=layout.name, stem_stride=layout.stem_stride)
    _copy_weights(model, thin, kept, layout)
    return thin, [len(k) for k in kept]


def _copy_weights(src: Any, dst: Any, kept: list[np.ndarray], layout: PlainLayout) -> None:
    in_idx = np.arange(src.input_shape[-1])
    for i, out_idx in enumerate(kept):
        conv = src.get_layer(f"conv_{i}").get_weights()
        new = [conv[0][:, :, in_idx, :][..., out_idx]] + ([conv[1][out_idx]] if len(conv) > 1 else [])
        dst.get_layer(f"conv_{i}").set_weights(new)
        if layout.batchnorm:
            dst.get_layer(f"bn_{i}").set_weights([w[out_idx] for w in src.get_layer(f"bn_{i}").get_weights()])
        in_idx = out_idx
    first_dense = "hidden" if layout.hidden else "logits"
    kernel, bias = src.get_layer(first_dense).get_weights()
    if layout.head == "flatten":
        h, w, c = (int(d) for d in src.get_layer("flatten").input_shape[1:])
        rows = np.arange(h * w * c).reshape(h, w, c)[:, :, in_idx].ravel()
    else:
        rows = in_idx
    dst.get_layer(first_dense).set_weights([kernel[rows], bias])
    if layout.hidden:
        dst.get_layer("logits").set_weights(src.get_layer("logits").get_weights())
