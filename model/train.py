"""Training: augmentation, cosine LR, early stopping, checkpoints, curves PNG, resolved config on disk."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from model.data import Dataset, Split
from model.runtime import setup_tf

log = logging.getLogger(__name__)


@dataclass
class CameraAugment:
    """What a camera does to a frame that a folder of photos lacks, each step applied to an image with its
    probability ``*_p``, in the order light -> lens -> sensor -> encoder: a random resized crop (area and aspect
    relative to the image, resized back to its size), a horizontal flip, colour jitter (brightness, contrast,
    saturation; saturation on three channels only), a Gaussian blur, Gaussian noise, JPEG re-compression."""

    crop_p: float = 0.8
    crop_area: tuple[float, float] = (0.6, 1.0)
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.2  # +- this fraction of the full 0..255 range
    contrast: float = 0.2  # factor in [1 - c, 1 + c] around the image's mean
    saturation: float = 0.3  # factor in [1 - s, 1 + s] around each pixel's gray
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)  # pixels; a 5x5 kernel
    noise_p: float = 0.3
    noise_std: float = 8.0  # at most, in pixel levels
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 95)


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_epochs: float = 0.5
    patience: int = 4
    augment: bool = True
    shift: int = 2  # without ``camera``: random shift (pad + crop) and h-flip, as the Fashion-MNIST runs train
    flip: bool = True
    camera: CameraAugment | None = None  # image folders: the camera augmentation instead of shift + flip
    threads: int = 2
    seed: int = 0
    limit: int | None = None  # use only the first N training images (tests, smoke runs)
    early_stopping: bool = True  # off while pruning: restoring "best" weights would undo the sparsity ramp
    extra: dict[str, Any] = field(default_factory=dict)


def make_dataset(split: Split, cfg: TrainConfig, training: bool, rgb: bool = False) -> Any:
    """tf.data pipeline over uint8 images, float32 batches out; on training data the augmentation of ``cfg``
    (``cfg.camera``, else a random shift via pad + crop and an h-flip). ``rgb``: the images' channels are in RGB
    order (the JPEG step must hand OpenCV BGR)."""
    tf = setup_tf(cfg.threads, cfg.seed)
    ds = tf.data.Dataset.from_tensor_slices((split.x, split.y))
    if training:
        ds = ds.shuffle(min(len(split.y), 20_000), seed=cfg.seed, reshuffle_each_iteration=True)
    h, w, c = split.x.shape[1:]
    if training and cfg.augment and cfg.camera:
        aug = cfg.camera
        # One OpenCV thread per call: an image this small is too little work to split (splitting cost ~50% more
        # CPU), and tf.data already runs ``threads`` batches at once.
        cv2.setNumThreads(1)

        def camera(x: Any, y: Any) -> tuple[Any, Any]:  # the seed of each batch's draws comes from TF's seeded RNG
            seed = tf.random.uniform([], 0, 2**62, tf.int64)
            out = tf.numpy_function(lambda b, s: camera_augment(b, aug, np.random.default_rng(s), rgb), [x, seed],
                                    tf.uint8, stateful=True)
            return tf.cast(tf.ensure_shape(out, x.shape), tf.float32), y

        return ds.batch(cfg.batch_size).map(camera, num_parallel_calls=cfg.threads).prefetch(2)

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


def camera_augment(batch: np.ndarray, aug: CameraAugment, rng: np.random.Generator, rgb: bool = False) -> np.ndarray:
    """A uint8 batch (N, H, W, C) augmented image by image as ``aug`` says, uint8 throughout. OpenCV, not
    TensorFlow ops: at 96x96 a TensorFlow op costs more to dispatch than to compute, and OpenCV releases the GIL,
    so ``num_parallel_calls`` batches run on as many cores."""
    out = np.empty_like(batch)
    h, w, c = batch.shape[1:]
    noise = None
    for i, img in enumerate(batch):
        img = _crop_and_flip(img, aug, rng)
        if rng.random() < aug.jitter_p:
            img = _jitter(img, c, aug, rng)
        if rng.random() < aug.blur_p:
            img = cv2.GaussianBlur(img, (5, 5), rng.uniform(*aug.blur_sigma), borderType=cv2.BORDER_REFLECT)
        if rng.random() < aug.noise_p:
            noise = _noise_field(batch.shape[1:], rng) if noise is None else noise
            img = _add_noise(img, noise, rng.uniform(0.0, aug.noise_std), rng)
        if rng.random() < aug.jpeg_p:
            quality = int(rng.integers(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1))
            img = _jpeg(img, quality, rgb and c == 3)
        out[i] = img.reshape(h, w, c)
    return out


def _jpeg(img: np.ndarray, quality: int, rgb: bool) -> np.ndarray:
    """A JPEG round trip at ``quality``, as a camera's encoder does it: OpenCV takes BGR, so RGB goes in swapped
    (chroma subsampling then lands on the real chroma)."""
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if rgb else img
    out = np.asarray(cv2.imdecode(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1],
                                  cv2.IMREAD_UNCHANGED))
    return np.asarray(cv2.cvtColor(out, cv2.COLOR_BGR2RGB)) if rgb else out


def _crop_and_flip(img: np.ndarray, aug: CameraAugment, rng: np.random.Generator) -> np.ndarray:
    """With ``crop_p``, a box of ``crop_area`` of the image, its aspect ``crop_aspect`` times the image's
    (content stretched by at most that, whatever the image's own aspect), resized back to the image's size;
    then, with ``flip_p``, mirrored."""
    h, w = img.shape[:2]
    if rng.random() < aug.crop_p:
        area = rng.uniform(*aug.crop_area)
        ratio = float(np.exp(rng.uniform(*np.log(aug.crop_aspect))))
        bh = min(h, max(1, round(h * np.sqrt(area / ratio))))
        bw = min(w, max(1, round(w * np.sqrt(area * ratio))))
        y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        img = cv2.resize(img[y0:y0 + bh, x0:x0 + bw], (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.flip(img, 1) if rng.random() < aug.flip_p else img


NOISE_MARGIN = 16  # a batch's noise field is this much larger than an image: each image takes a shifted window


def _noise_field(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Standard normal noise, one field per batch: drawing fresh normals for every image would cost more than all
    the other steps together (~7 ns a value)."""
    h, w, c = shape
    return rng.standard_normal((h + NOISE_MARGIN, w + NOISE_MARGIN, c), dtype=np.float32)


def _add_noise(img: np.ndarray, field: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """``img`` plus ``std`` times a random window of ``field``, saturated to 0..255."""
    h, w = img.shape[:2]
    y0, x0 = (int(v) for v in rng.integers(0, NOISE_MARGIN + 1, 2))
    noise = (field[y0:y0 + h, x0:x0 + w] * std).astype(np.int16).reshape(img.shape)
    return cv2.add(img, noise, dtype=cv2.CV_8U)


def _jitter(img: np.ndarray, channels: int, aug: CameraAugment, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation as one affine colour map: ``k * (s * x + (1 - s) * gray) + t``, with
    ``gray`` the pixel's channel mean and ``t`` moving the image's mean by the brightness delta while contrast
    ``k`` scales around it. Saturated to 0..255."""
    k = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
    mean = sum(cv2.mean(img)[:channels]) / channels
    t = (1 - k) * mean + rng.uniform(-aug.brightness, aug.brightness) * 255.0
    s = rng.uniform(1 - aug.saturation, 1 + aug.saturation) if channels == 3 else 1.0
    colour = k * (s * np.eye(channels) + (1 - s) / channels)
    return cv2.transform(img, np.hstack([colour, np.full((channels, 1), t)]).astype(np.float32))


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
        rgb = data.spec.color == "rgb"
        history = model.fit(make_dataset(train, cfg, True, rgb), validation_data=make_dataset(data.val, cfg, False),
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
