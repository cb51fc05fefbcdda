"""One function per ``vigil model`` stage: load inputs, call the library, write artifacts + metrics.

Each run directory holds ``model.keras.h5`` (float), ``config.json`` (resolved config, the input spec of its
data and the command) and ``metrics.json``; ``quantize`` adds ``model.float.tflite`` / ``model.int8.tflite``
and their measurements.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common.bundle import BundleSpec, InputSpec
from common.errors import ConfigError
from model.data import Dataset
from model.train import TrainConfig

log = logging.getLogger(__name__)

KERAS_FILE = "model.keras.h5"
FLOAT_TFLITE = "model.float.tflite"
INT8_TFLITE = "model.int8.tflite"
CONFIG_FILE = "config.json"


def load_keras(path: Path) -> Any:
    """The Keras model saved at ``path`` (a run's model.keras.h5); a file that is not one is a usage error."""
    from model.runtime import setup_tf

    setup_tf()
    import tf_keras as keras

    try:
        return keras.models.load_model(str(path), compile=False)
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"--model {path} is not a Keras model file ({str(exc).splitlines()[0][:200]}). Pass a "
                          f"run's {KERAS_FILE} (written by `vigil model train`, `prune` or `structured`).") from exc


def check_outputs(model: Any, labels: list[str], what: str) -> None:
    """The model has one output per label: a bundle whose labels do not match would crash every worker."""
    outputs = int(model.output_shape[-1])
    if outputs != len(labels):
        raise ConfigError(f"{what}: the model has {outputs} outputs but the data has {len(labels)} labels "
                          f"({', '.join(labels[:12])}{', ...' if len(labels) > 12 else ''}). Pass the --data the "
                          "model was trained on.")


def check_input(model: Any, data: Dataset, what: str) -> None:
    """The model takes the images ``data`` was prepared as: a bundle whose spec differs from its model's input
    would be refused by every worker."""
    model_shape = tuple(int(d) for d in model.input_shape[1:])
    if model_shape != data.spec.shape:
        raise ConfigError(f"{what}: the model takes {'x'.join(map(str, model_shape))} images but --data {data.name} "
                          f"is prepared as {'x'.join(map(str, data.spec.shape))} ({data.spec.color}). Pass the "
                          "--size and --color it was trained with.")


def run_data_source(model_path: Path) -> dict[str, Any]:
    """How the run beside ``model_path`` made its splits (data, test_data, seed); empty when it did not record it."""
    path = model_path.parent / CONFIG_FILE
    try:
        source = json.loads(path.read_text()).get("data_source") if path.is_file() else None
    except json.JSONDecodeError:
        return {}  # run_input_spec names the broken file
    return source if isinstance(source, dict) else {}


def run_input_spec(model_path: Path) -> InputSpec | None:
    """The input spec a run recorded in its config.json beside ``model_path`` (None: no config.json, or one
    written before runs recorded it)."""
    path = model_path.parent / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text()).get("input")
        return InputSpec.model_validate(recorded) if recorded else None
    except (json.JSONDecodeError, AttributeError, ValidationError) as exc:
        raise ConfigError(f"{path}: not a valid run config ({str(exc).splitlines()[0]}). Fix or remove it; "
                          "without it, --size/--color/--resize give the input spec.") from exc


def save_run(model: Any, data: Dataset, out: Path, metrics: dict[str, Any], **config: Any) -> dict[str, Any]:
    """Write the model, metrics.json and config.json (the dataset, its input spec and ``config``) into ``out``."""
    from model.train import keras_accuracy, write_config

    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out / KERAS_FILE), include_optimizer=False, save_format="h5")
    metrics = {**metrics, "params": int(model.count_params()),
               "val_accuracy_float": keras_accuracy(model, data.val),
               "test_accuracy_float": keras_accuracy(model, data.test)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_config(out, **{"dataset": data.name, "input": data.spec.model_dump(), "data_source": data.source,
                         **config})
    return metrics


def train_run(data: Dataset, arch: str, cfg: TrainConfig, out: Path, *, command: str, width: float = 1.0,
              weights: Path | None = None, backbone_size: int | None = None) -> dict[str, Any]:
    from model.architectures import build
    from model.train import fit

    ignored = []  # options the architecture would ignore, while config.json would record them as if they took effect
    if not arch.startswith("keras-"):
        ignored += [flag for flag, given in (("--weights", weights is not None),
                                             ("--backbone-size", backbone_size is not None)) if given]
    if arch == "baseline-cnn" and width != 1.0:
        ignored.append("--width")
    if ignored:
        raise ConfigError(f"{', '.join(ignored)}: not used by --arch {arch} (--weights and --backbone-size are for "
                          "keras-* architectures; baseline-cnn has no width). Drop them, or pick an architecture "
                          "they apply to.")
    extra = {"size": backbone_size} if backbone_size else {}
    model = build(arch, data.input_shape, len(data.labels), width=width, weights=weights, **extra)
    hist = fit(model, data, cfg, out)
    recalibrated = recalibrate_run(model, data, arch)
    return save_run(model, data, out, {"arch": arch, "epochs_run": len(hist["loss"]), **recalibrated},
                    train=cfg, arch=arch, width=width, weights=weights, backbone_size=backbone_size,
                    command=command)


def distill_run(data: Dataset, teacher_path: Path, arch: str, width: float, cfg: TrainConfig, out: Path, *,
                temperature: float, alpha: float, command: str) -> dict[str, Any]:
    from model.architectures import build
    from model.distill import distill, soft_loss

    teacher = load_keras(teacher_path)
    check_outputs(teacher, data.labels, f"--teacher {teacher_path}")
    check_input(teacher, data, f"--teacher {teacher_path}")
    student = build(arch, data.input_shape, len(data.labels), width=width)
    student, hist = distill(student, teacher, data, cfg, out, temperature, alpha)
    metrics = {"arch": arch, "width": width, "teacher": str(teacher_path), "epochs_run": len(hist["loss"]),
               "soft_loss_vs_teacher": soft_loss(student, teacher, data.val.x[:1000], temperature)}
    return save_run(student, data, out, metrics, train=cfg, arch=arch, width=width, teacher=str(teacher_path),
                    temperature=temperature, alpha=alpha, command=command)


def recalibrate_run(model: Any, data: Dataset, arch: str, images: int = 2048) -> dict[str, Any]:
    """keras-* backbones (BN momentum 0.999 by design) get their BN statistics re-estimated after training."""
    if not arch.startswith("keras-"):
        return {}
    from model.train import recalibrate_bn

    layers, used = recalibrate_bn(model, data.train.x[:images])
    return {"bn_recalibrated": {"layers": layers, "images": used}}


def prune_run(data: Dataset, model_path: Path, sparsity: float, cfg: TrainConfig, out: Path, *,
              command: str) -> dict[str, Any]:
    from model.prune import magnitude_prune

    model = load_keras(model_path)
    check_input(model, data, f"--model {model_path}")
    pruned, report = magnitude_prune(model, data, sparsity, cfg, out)
    (out / "sparsity.json").write_text(json.dumps(report, indent=2) + "\n")
    return save_run(pruned, data, out, {"parent": str(model_path), "target_sparsity": sparsity,
                                        "sparsity": report["total"], "epochs_run": cfg.epochs},
                    train=cfg, parent=str(model_path), sparsity=sparsity, command=command)


def structured_run(data: Dataset, model_path: Path, keep: float, criterion: str, cfg: TrainConfig, out: Path, *,
                   command: str) -> dict[str, Any]:
    from model.structured import prune_channels
    from model.train import fit

    parent = load_keras(model_path)
    check_input(parent, data, f"--model {model_path}")
    thin, kept = prune_channels(parent, keep, criterion)
    hist = fit(thin, data, cfg, out) if cfg.epochs > 0 else {"loss": []}
    return save_run(thin, data, out, {"parent": str(model_path), "keep": keep, "criterion": criterion,
                                      "channels": kept, "parent_params": int(parent.count_params()),
                                      "epochs_run": len(hist["loss"])},
                    train=cfg, parent=str(model_path), keep=keep, criterion=criterion, command=command)


def qat_run(data: Dataset, model_path: Path, cfg: TrainConfig, out: Path, *, command: str, samples: int = 300,
            preserve_sparsity: bool = True) -> dict[str, Any]:
    """QAT fine-tune of a (pruned) float model; writes the parent's float TFLite and the QAT INT8 TFLite."""
    from model.prune import sparsity_report
    from model.qat import quantize_aware
    from model.quantize import to_float_tflite, to_int8_tflite
    from model.train import write_config

    parent = load_keras(model_path)
    check_input(parent, data, f"--model {model_path}")
    out.mkdir(parents=True, exist_ok=True)
    (out / FLOAT_TFLITE).write_bytes(to_float_tflite(parent))
    qat = quantize_aware(parent, data, cfg, out, preserve_sparsity)
    (out / INT8_TFLITE).write_bytes(to_int8_tflite(qat, data.train.x, samples))
    metrics = {"parent": str(model_path), "params": int(parent.count_params()), "epochs_run": cfg.epochs,
               "preserve_sparsity": preserve_sparsity, "sparsity": sparsity_report(parent)["total"],
               "note": "float files are the parent's; INT8 comes from quantization-aware fine-tuning"}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_config(out, dataset=data.name, input=data.spec.model_dump(), train=cfg, parent=str(model_path),
                 samples=samples, preserve_sparsity=preserve_sparsity, command=command)
    return metrics


def quantize_run(data: Dataset, model_path: Path, samples: int = 300, threads: int = 2,
                 limit: int | None = None) -> dict[str, Any]:
    from model.evaluate import evaluate_tflite
    from model.quantize import to_float_tflite, to_int8_tflite

    model = load_keras(model_path)
    check_input(model, data, f"--model {model_path}")
    out = model_path.parent
    (out / FLOAT_TFLITE).write_bytes(to_float_tflite(model))
    (out / INT8_TFLITE).write_bytes(to_int8_tflite(model, data.train.x, samples))
    test = data.test.head(limit)
    result = {name: evaluate_tflite(out / name, test.x, test.y, len(data.labels), threads)
              for name in (FLOAT_TFLITE, INT8_TFLITE)}
    (out / "quantize.json").write_text(json.dumps(result, indent=1) + "\n")
    return {n: {k: v for k, v in m.items() if k != "confusion_matrix"} for n, m in result.items()}


def bundle_run(data: Dataset, model_path: Path, out: Path, *, name: str, version: str, command: str,
               samples: int = 300, threads: int = 2, limit: int | None = None,
               saved_model: bool = True, int8_path: Path | None = None) -> BundleSpec:
    from model.bundle import check_replaceable, export_bundle
    from model.evaluate import evaluate_tflite
    from model.quantize import to_int8_tflite

    check_replaceable(out)  # before the minutes of converting and evaluating
    model = load_keras(model_path)
    check_outputs(model, data.labels, f"bundle of {model_path}")  # before the minutes of converting
    check_input(model, data, f"bundle of {model_path}")
    if int8_path is not None:  # e.g. a QAT run's INT8 model; the float files still come from ``model_path``
        from model.quantize import assert_integer_only

        int8 = int8_path.read_bytes()
        assert_integer_only(int8)
    else:
        int8 = to_int8_tflite(model, data.train.x, samples)
    test = data.test.head(limit)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "m.tflite").write_bytes(int8)
        metrics = evaluate_tflite(Path(tmp) / "m.tflite", test.x, test.y, len(data.labels), threads)
    metrics.pop("confusion_matrix")
    parent = model_path.parent / "metrics.json"
    extra = {"source_model": str(model_path), "source_int8": str(int8_path) if int8_path else None,
             "calibration_samples": samples,
             "run_metrics": json.loads(parent.read_text()) if parent.is_file() else {}}
    return export_bundle(out, model, int8, data.labels, input_spec=data.spec, name=name, version=version,
                         command=command, metrics=metrics, extra=extra, saved_model=saved_model)
