"""Write a bundle directory in the format ``common.bundle`` loads and validates."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.bundle import LABELS_FILE, TFLITE_FILE, BundleSpec, InputSpec, check_labels, file_digest, write_spec
from model.quantize import quant_spec

SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "model.keras.h5"


def export_bundle(out: Path, model: Any, int8: bytes, labels: list[str], *, name: str, version: str,
                  command: str, metrics: dict[str, Any] | None = None, color: str = "gray",
                  extra: dict[str, Any] | None = None, saved_model: bool = True) -> BundleSpec:
    """Write model.tflite, labels.txt, model.keras.h5, saved_model/ and spec.json into ``out`` (replaced)."""
    check_labels(labels, f"bundle {out}")  # before anything in ``out`` is replaced
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / TFLITE_FILE).write_bytes(int8)
    (out / LABELS_FILE).write_text("\n".join(labels) + "\n")
    model.save(str(out / KERAS_FILE), include_optimizer=False, save_format="h5")
    if saved_model:
        model.save(str(out / SAVED_MODEL_DIR), include_optimizer=False, save_format="tf")
    files = {p.name: file_digest(p) for p in sorted(out.iterdir())}
    h, w, c = (int(d) for d in model.input_shape[1:])
    spec = BundleSpec(
        name=name,
        version=f"{version}+{hashlib.sha256(int8).hexdigest()[:8]}",
        architecture=model.name,
        num_classes=len(labels),
        input=InputSpec(height=h, width=w, channels=c, dtype="uint8", color=color,  # type: ignore[arg-type]
                        resize="stretch", scale=1.0 / 255.0, offset=0.0, invert=False),
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
