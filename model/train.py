"""Training: augmentation, cosine LR, early stopping, checkpoints, curves PNG, resolved config on disk."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.data import Dataset, Split
from model.runtime import setup_tf

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_epochs: float = 0.5
    patience: int = 4
    augment: bool = True
    shift: int = 2
    flip: bool = True
    threads: int = 2
    seed: int = 0
    limit: int | None = None  # use only the first N training images (tests, smoke runs)
    early_stopping: bool = True  # off while pruning: restoring "best" weights would undo the sparsity ramp
    extra: dict[str, Any] = field(default_factory=dict)


def make_dataset(split: Split, cfg: TrainConfig, training: bool) -> Any:
    """tf.data pipeline over uint8 images; augmentation (random shift via pad+crop, h-flip) on training data."""
    tf = setup_tf(cfg.threads, cfg.seed)
    ds = tf.data.Dataset.from_tensor_slices((split.x, split.y))
    if training:
        ds = ds.shuffle(min(len(split.y), 20_000), seed=cfg.seed, reshuffle_each_iteration=True)
    h, w, c = split.x.shape[1:]

    def augment(x: Any, y: Any) -> tuple[Any, Any]:
        x = tf.cast(x, tf.float32)
        if cfg.shift:
            x = tf.pad(x, [[cfg.shift, cfg.shift], [cfg.shift, cfg.shift], [0, 0]])
            x = tf.image.random_crop(x, (h, w, c))
        if cfg.flip:
            x = tf.image.random_flip_left_right(x)
        return x, y

    def to_float(x: Any, y: Any) -> tuple[Any, Any]:
        return tf.cast(x, tf.float32), y

    fn = augment if (training and cfg.augment) else to_float
    return ds.map(fn, num_parallel_calls=cfg.threads).batch(cfg.batch_size).prefetch(2)


def compile_model(model: Any, cfg: TrainConfig, steps_per_epoch: int, lr: float | None = None) -> None:
    import tf_keras as keras

    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    peak = lr or cfg.lr
    schedule = keras.optimizers.schedules.CosineDecay(
        peak / 10 if warmup else peak, max(1, total - warmup), alpha=0.01,
        warmup_target=peak if warmup else None, warmup_steps=warmup)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay) if cfg.weight_decay \
        else keras.optimizers.Adam(schedule)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def fit(model: Any, data: Dataset, cfg: TrainConfig, out: Path, extra_callbacks: list[Any] | None = None,
        lr: float | None = None) -> dict[str, list[float]]:
    """Compile and fit ``model`` on ``data``; checkpoints and logs go under ``out``. Returns the history."""
    import tf_keras as keras

    setup_tf(cfg.threads, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    train = data.train.head(cfg.limit)
    steps = int(np.ceil(len(train.y) / cfg.batch_size))
    compile_model(model, cfg, steps, lr)
    callbacks = [keras.callbacks.CSVLogger(str(out / "history.csv")), *(extra_callbacks or [])]
    if cfg.early_stopping:
        callbacks += [
            keras.callbacks.EarlyStopping("val_accuracy", patience=cfg.patience, restore_best_weights=True),
            keras.callbacks.ModelCheckpoint(str(out / "checkpoint.weights.h5"), "val_accuracy",
                                            save_best_only=True, save_weights_only=True),
        ]
    with contextlib.redirect_stdout(sys.stderr):  # Keras's epoch lines are progress: stdout is the JSON result
        history = model.fit(make_dataset(train, cfg, True), validation_data=make_dataset(data.val, cfg, False),
                            epochs=cfg.epochs, callbacks=callbacks, verbose=2)
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    (out / "history.json").write_text(json.dumps(hist, indent=1))
    plot_curves(hist, out / "curves.png")
    return hist


def recalibrate_bn(model: Any, x: np.ndarray, batch_size: int = 128) -> tuple[int, int]:
    """Re-estimate every BatchNormalization layer's moving mean/variance as the plain average of its batch
    statistics over ``x`` (forward passes in training mode; weights untouched). After a short run the moving
    statistics lag the weights — inference then collapses to one class while training accuracy looks fine.
    Returns ``(BN layers re-estimated, images used)``: whole batches only (a batch of every image when there are
    fewer than ``batch_size``, so a small ``x`` still re-estimates every layer)."""
    import tf_keras as keras

    def bn_layers(layer: Any) -> list[Any]:
        if isinstance(layer, keras.layers.BatchNormalization):
            return [layer]
        return [bn for sub in getattr(layer, "layers", []) for bn in bn_layers(sub)]

    layers = bn_layers(model)
    saved = [bn.momentum for bn in layers]
    batch_size = max(1, min(batch_size, len(x)))
    starts = range(0, len(x) - batch_size + 1, batch_size)
    for step, start in enumerate(starts):
        for bn in layers:
            bn.momentum = step / (step + 1)  # moving = running average of the batches seen so far
        model(x[start:start + batch_size].astype(np.float32), training=True)
    for bn, momentum in zip(layers, saved, strict=True):
        bn.momentum = momentum
    return len(layers), len(starts) * batch_size if len(x) else 0


def keras_accuracy(model: Any, split: Split, batch_size: int = 256) -> float:
    logits = model.predict(split.x.astype(np.float32), batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == split.y))


def plot_curves(hist: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix in ("", "val_"):
            if prefix + key in hist:
                ax.plot(range(1, len(hist[prefix + key]) + 1), hist[prefix + key], label=prefix + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_config(out: Path, **sections: Any) -> Path:
    """The resolved config (dataclasses and plain values) beside the artifacts it produced."""
    resolved = {k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in sections.items()}
    path = out / "config.json"
    path.write_text(json.dumps(resolved, indent=2, default=str) + "\n")
    return path
