"""Model builders. Every model takes raw pixels (float 0..255, shape H x W x C), rescales them itself and
ends at logits (no softmax: XNNPACK has no int8 SOFTMAX kernel). Layers carry stable names so that
``model.structured`` can find conv -> batchnorm -> next-conv chains."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tf_keras as keras

from common.errors import ConfigError

log = logging.getLogger(__name__)

L = keras.layers

# Stages of the two plain CNNs: each inner list is one stage of 3x3 convs followed by 2x2 max-pool
# (the last stage is followed by the head instead).
BASELINE_STAGES = [[32], [64]]
VGG_STAGES = [[32, 32], [64, 64], [128, 128]]


def _inputs(input_shape: Sequence[int]) -> tuple[Any, Any]:
    inp = keras.Input(shape=tuple(input_shape), name="image")
    return inp, L.Rescaling(1.0 / 255.0, name="rescale")(inp)


def plain_cnn(input_shape: Sequence[int], num_classes: int, stages: Sequence[Sequence[int]],
              batchnorm: bool, head: str = "gap", hidden: int = 0, dropout: float = 0.0,
              name: str = "plain_cnn", stem_stride: int = 1) -> keras.Model:
    """conv(-bn)-relu stacks with max-pool between stages, then GAP or flatten, optional hidden dense. The first
    conv strides by ``stem_stride`` (a camera-sized input brought down to the stages' working size)."""
    inp, x = _inputs(input_shape)
    i = 0
    for s, widths in enumerate(stages):
        if s > 0:
            x = L.MaxPooling2D(2, name=f"pool_{s}")(x)
        for w in widths:
            stride = stem_stride if i == 0 else 1
            x = L.Conv2D(w, 3, strides=stride, padding="same", use_bias=not batchnorm, name=f"conv_{i}")(x)
            if batchnorm:
                x = L.BatchNormalization(name=f"bn_{i}")(x)
            x = L.ReLU(name=f"relu_{i}")(x)
            i += 1
    if head == "gap":
        x = L.GlobalAveragePooling2D(name="gap")(x)
    else:
        x = L.MaxPooling2D(2, name=f"pool_{len(stages)}")(x)
        x = L.Flatten(name="flatten")(x)
    if hidden:
        x = L.Dense(hidden, activation="relu", name="hidden")(x)
    if dropout:
        x = L.Dropout(dropout, name="dropout")(x)
    out = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name=name)


def baseline_cnn(input_shape: Sequence[int], num_classes: int, **_: Any) -> keras.Model:
    """The paper's plain baseline: conv-pool-conv-pool-dense, no batchnorm."""
    return plain_cnn(input_shape, num_classes, BASELINE_STAGES, batchnorm=False, head="flatten",
                     hidden=128, dropout=0.3, name="baseline_cnn")


def vgg_bn(input_shape: Sequence[int], num_classes: int, width: float = 1.0,
           stages: Sequence[Sequence[int]] | None = None, stem_stride: int = 1, **_: Any) -> keras.Model:
    """Compact VGG-style net with batchnorm and global average pooling (our main model)."""
    widths = stages or [[max(8, round(w * width)) for w in st] for st in VGG_STAGES]
    return plain_cnn(input_shape, num_classes, widths, batchnorm=True, head="gap", dropout=0.2, name="vgg_bn",
                     stem_stride=stem_stride)


CAMERA_WORKING_SIZE = 32  # the camera net's stages run at about this many pixels on the input's shorter side


def camera_vgg(input_shape: Sequence[int], num_classes: int, width: float = 1.0,
               stages: Sequence[Sequence[int]] | None = None, **_: Any) -> keras.Model:
    """vgg_bn for camera-sized inputs (96x96 and up): its first conv strides by shorter side // 32, so the stages
    run at ~32 px whatever the input size and the cost per frame stays that of a 32x32 net (a 96x96x3 input:
    stride 3). Structured pruning and INT8 work as for vgg_bn."""
    stride = max(1, min(int(input_shape[0]), int(input_shape[1])) // CAMERA_WORKING_SIZE)
    widths = stages or [[max(8, round(w * width)) for w in st] for st in VGG_STAGES]
    return plain_cnn(input_shape, num_classes, widths, batchnorm=True, head="gap", dropout=0.2,
                     name="camera_vgg", stem_stride=stride)


def _inverted_residual(x: Any, expand: int, out_ch: int, stride: int, name: str) -> Any:
    in_ch = int(x.shape[-1])
    y = x
    if expand != 1:
        y = L.Conv2D(in_ch * expand, 1, use_bias=False, name=f"{name}_expand")(y)
        y = L.BatchNormalization(name=f"{name}_expand_bn")(y)
        y = L.ReLU(6.0, name=f"{name}_expand_relu")(y)
    y = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(y)
    y = L.BatchNormalization(name=f"{name}_dw_bn")(y)
    y = L.ReLU(6.0, name=f"{name}_dw_relu")(y)
    y = L.Conv2D(out_ch, 1, use_bias=False, name=f"{name}_project")(y)
    y = L.BatchNormalization(name=f"{name}_project_bn")(y)
    if stride == 1 and in_ch == out_ch:
        y = L.Add(name=f"{name}_add")([x, y])
    return y


# (expansion, channels, repeats, first stride), MobileNetV2's table cut down for 28x28 inputs.
MNV2_BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 1)]


def mobilenet_v2_style(input_shape: Sequence[int], num_classes: int, width: float = 1.0, **_: Any) -> keras.Model:
    """MobileNetV2-style net (inverted residuals, ReLU6) with a width multiplier, sized for small inputs."""

    def ch(c: int) -> int:
        return max(8, int(c * width + 4) // 8 * 8)

    inp, x = _inputs(input_shape)
    x = L.Conv2D(ch(32), 3, padding="same", use_bias=False, name="stem")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    for b, (t, c, n, s) in enumerate(MNV2_BLOCKS):
        for r in range(n):
            x = _inverted_residual(x, t, ch(c), s if r == 0 else 1, name=f"block{b}_{r}")
    x = L.Conv2D(ch(256), 1, use_bias=False, name="head_conv")(x)
    x = L.BatchNormalization(name="head_bn")(x)
    x = L.ReLU(6.0, name="head_relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name=f"mobilenet_v2_style_{width:g}")


KERAS_APPS: dict[str, str] = {
    "keras-mobilenet-v2": "MobileNetV2",
    "keras-mobilenet-v3-small": "MobileNetV3Small",
    "keras-mobilenet-v3-large": "MobileNetV3Large",
    "keras-efficientnet-b0": "EfficientNetB0",
}


def keras_application(input_shape: Sequence[int], num_classes: int, app: str = "keras-mobilenet-v2",
                      weights: Path | None = None, size: int = 96, width: float = 1.0, **_: Any) -> keras.Model:
    """A Keras application backbone. Weights come from a *local* file only (nothing downloads here)."""
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(f"weights file {weights} does not exist; pass a local .h5 (downloads are unavailable).")
    ctor = getattr(keras.applications, KERAS_APPS[app])
    inp = keras.Input(shape=tuple(input_shape), name="image")
    x = L.Resizing(size, size, name="resize")(inp)
    if input_shape[-1] == 1:
        x = L.Concatenate(name="gray_to_rgb")([x, x, x])
    if app == "keras-mobilenet-v2":
        x = L.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)  # the other apps rescale inside
    kwargs: dict[str, Any] = {"alpha": width} if "mobilenet" in app else {}
    base = ctor(input_shape=(size, size, 3), include_top=False, weights=None, pooling="avg", **kwargs)
    if weights is not None:
        _load_backbone_weights(base, weights)
    else:
        # From scratch, the applications' BN momentum (0.999) leaves the moving statistics near their initial
        # values after a short run (validation accuracy at chance); 0.9 lets them follow the training batches.
        for layer in base.layers:
            if isinstance(layer, L.BatchNormalization):
                layer.momentum = 0.9
    out = L.Dense(num_classes, name="logits")(base(x))
    return keras.Model(inp, out, name=app)


ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "baseline-cnn": baseline_cnn,
    "vgg-bn": vgg_bn,
    "camera-vgg": camera_vgg,
    "mobilenet-v2-style": mobilenet_v2_style,
    **{name: (lambda s, n, _app=name, **kw: keras_application(s, n, app=_app, **kw)) for name in KERAS_APPS},
}


def build(name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any) -> keras.Model:
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[name](input_shape, num_classes, **kwargs)


def _load_backbone_weights(base: Any, weights: Path) -> None:
    """Load ``weights`` into the backbone by layer name, refusing a file that sets none of its weights
    (``skip_mismatch`` skips them silently, and the run would train from scratch under a config that names the
    weights)."""
    before = [w.copy() for w in base.get_weights()]
    try:
        base.load_weights(str(weights), by_name=True, skip_mismatch=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--weights {weights} is not a Keras weights file ({str(exc).splitlines()[0][:200]}).") \
            from exc
    changed = sum(not np.array_equal(a, b) for a, b in zip(before, base.get_weights(), strict=True))
    if changed == 0:
        raise ConfigError(f"--weights {weights}: none of its layers match the {base.name} backbone by name, so no "
                          "weight would load. Pass weights saved from the same Keras application.")
    log.info("--weights %s: loaded %d of %d weight arrays of %s", weights, changed, len(before), base.name)
