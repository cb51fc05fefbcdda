"""Write a bundle directory in the format ``common.bundle`` loads and validates."""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.bundle import (
    LABELS_FILE,
    SPEC_FILE,
    TFLITE_FILE,
    BundleSpec,
    InputSpec,
    check_labels,
    file_digest,
    write_spec,
)
from common.errors import ConfigError
from model.quantize import quant_spec

SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "model.keras.h5"


def export_bundle(out: Path, model: Any, int8: bytes, labels: list[str], *, input_spec: InputSpec, name: str,
                  version: str, command: str, metrics: dict[str, Any] | None = None,
                  extra: dict[str, Any] | None = None, saved_model: bool = True) -> BundleSpec:
    """Write model.tflite, labels.txt, model.keras.h5, saved_model/ and spec.json into ``out``; ``input_spec``
    (the one the training images were prepared with, ``Dataset.spec``) tells producers how to prepare frames.
    An existing bundle there is replaced whole, and only once the new one is complete (written beside it, then
    renamed over it): an interrupted export leaves the old bundle, never half of one. Anything else at ``out`` is
    refused."""
    check_labels(labels, f"bundle {out}")  # before anything in ``out`` is replaced
    check_replaceable(out)
    if model is not None and tuple(int(d) for d in model.input_shape[1:]) != input_spec.shape:
        raise ConfigError(f"bundle {out}: the model takes {tuple(model.input_shape[1:])} images but the input spec "
                          f"says {input_spec.shape}. Export it with the spec its training data was prepared with.")
    final, out = out, out.parent / f".{out.name}.partial-{os.getpid()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    try:
        spec = _write(out, model, int8, labels, input_spec=input_spec, name=name, version=version, command=command,
                      metrics=metrics, extra=extra, saved_model=saved_model)
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        out.rename(final)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
    return spec


def check_replaceable(out: Path) -> None:
    """``out`` is free, an empty directory or a bundle (it holds spec.json): `--out ~` must not delete a home
    directory."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} is a file; a bundle is a directory. Pick another path.")
    if any(out.iterdir()) and not (out / SPEC_FILE).is_file():
        raise ConfigError(f"--out {out} is a directory that is not a bundle (no {SPEC_FILE}); it would be deleted. "
                          "Pick a new path, or a bundle directory to replace.")


def _write(out: Path, model: Any, int8: bytes, labels: list[str], *, input_spec: InputSpec, name: str, version: str,
           command: str, metrics: dict[str, Any] | None, extra: dict[str, Any] | None,
           saved_model: bool) -> BundleSpec:
    (out / TFLITE_FILE).write_bytes(int8)
    (out / LABELS_FILE).write_text("\n".join(labels) + "\n")
    model.save(str(out / KERAS_FILE), include_optimizer=False, save_format="h5")
    if saved_model:
        model.save(str(out / SAVED_MODEL_DIR), include_optimizer=False, save_format="tf")
    files = {p.name: file_digest(p) for p in sorted(out.iterdir())}
    spec = BundleSpec(
        name=name,
        version=f"{version}+{hashlib.sha256(int8).hexdigest()[:8]}",
        architecture=model.name,
        num_classes=len(labels),
        input=input_spec,
        quantization=quant_spec(int8),
        outputs="logits",
        files=files,
        metrics=metrics or {},
        command=command,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        extra=extra or {},
    )
    write_spec(out, spec)
    return spec
