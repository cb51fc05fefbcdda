"""The model bundle: a versioned directory that workers, producers and ``vigil model evaluate`` load.

Layout::

    BUNDLE/
      spec.json          this module's BundleSpec (format version, input spec, quantisation, hashes, metrics)
      model.tflite       full-integer INT8 LiteRT model (CPU workers)
      labels.txt         one class name per line, index order
      saved_model/       float SavedModel (GPU workers; optional)
      model.keras.h5     float tf_keras model (naive baseline in benches; optional)

Loading validates the spec, the presence and SHA-256 of every listed file, and the label count.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import BundleError

BUNDLE_FORMAT = 1
SPEC_FILE = "spec.json"
LABELS_FILE = "labels.txt"
TFLITE_FILE = "model.tflite"


class InputSpec(BaseModel):
    """What a frame must look like before it enters the model. Producers preprocess to exactly this."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(ge=1, le=4096)
    width: int = Field(ge=1, le=4096)
    channels: Literal[1, 3]
    dtype: Literal["uint8", "int8", "float32"] = "uint8"
    color: Literal["gray", "rgb", "bgr"] = "gray"
    resize: Literal["stretch", "letterbox", "center_crop"] = "stretch"
    # The model applies (x * scale + offset) itself, so raw uint8 pixels go straight in.
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    invert: bool = Field(default=False, description="Fashion-MNIST style: bright object on dark background.")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


class QuantSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int
    output_dtype: Literal["uint8", "int8", "float32"]


class BundleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    format: int = BUNDLE_FORMAT
    name: str
    version: str = Field(description="Human version plus a content hash, e.g. 1.0.0+3fa2b1c9.")
    architecture: str
    num_classes: int = Field(ge=2)
    input: InputSpec
    quantization: QuantSpec | None = None
    outputs: Literal["logits", "probabilities"] = "logits"
    files: dict[str, str] = Field(description="relative path -> sha256 of every file (dirs: hash of contents)")
    metrics: dict[str, Any] = Field(default_factory=dict)
    command: str = Field(description="The command line that produced this bundle.")
    created: str = ""
    extra: dict[str, Any] = Field(default_factory=dict)


class Bundle:
    """A validated bundle on disk."""

    def __init__(self, root: Path, spec: BundleSpec, labels: list[str]) -> None:
        self.root = root
        self.spec = spec
        self.labels = labels

    @property
    def tflite_path(self) -> Path:
        return self.root / TFLITE_FILE

    @property
    def saved_model_path(self) -> Path:
        return self.root / "saved_model"

    @property
    def version(self) -> str:
        return self.spec.version

    @classmethod
    def load(cls, root: Path | str, *, verify_hashes: bool = True) -> Bundle:
        root = Path(root)
        if not root.is_dir():
            raise BundleError(
                f"bundle {root} {'is a file, not a directory' if root.is_file() else 'does not exist'}. Pass a "
                "directory made by `vigil model bundle` (`vigil --bundle PATH ...` or VIGIL_BUNDLE), or use the "
                "shipped one in bundles/fashion-mnist."
            )
        spec = _read_spec(root)
        for rel, digest in spec.files.items():
            path = root / rel
            if not path.exists():
                raise BundleError(f"bundle {root}: file {rel} listed in {SPEC_FILE} is missing. Re-export it.")
            if verify_hashes and file_digest(path) != digest:
                raise BundleError(
                    f"bundle {root}: {rel} is corrupt (sha256 differs from {SPEC_FILE}). "
                    "Restore it from version control or re-run `vigil model bundle`."
                )
        if TFLITE_FILE not in spec.files:
            raise BundleError(f"bundle {root}: {SPEC_FILE} lists no {TFLITE_FILE}; it cannot be served on CPU.")
        labels = _read_labels(root, spec.num_classes)
        return cls(root, spec, labels)


def _read_spec(root: Path) -> BundleSpec:
    path = root / SPEC_FILE
    if not path.is_file():
        raise BundleError(f"bundle {root}: {SPEC_FILE} is missing; this is not a Vigil bundle directory.")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"bundle {root}: {SPEC_FILE} is not valid JSON ({exc}).") from exc
    if isinstance(raw, dict) and raw.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"bundle {root}: format {raw.get('format')!r} is not supported (this Vigil reads format "
            f"{BUNDLE_FORMAT}). Re-export the bundle with this version of Vigil."
        )
    try:
        return BundleSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BundleError(f"bundle {root}: {SPEC_FILE} is invalid: {problems}") from exc


def _read_labels(root: Path, num_classes: int) -> list[str]:
    path = root / LABELS_FILE
    if not path.is_file():
        raise BundleError(f"bundle {root}: {LABELS_FILE} is missing.")
    labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(labels) != num_classes:
        raise BundleError(
            f"bundle {root}: {LABELS_FILE} has {len(labels)} labels but the spec says {num_classes} classes."
        )
    check_labels(labels, f"bundle {root}")
    return labels


def check_labels(labels: list[str], where: str) -> None:
    """Labels travel in a result's ``topk`` field, ``label:p,label:p`` (docs/results-schema.md): no comma."""
    if bad := [label for label in labels if "," in label or "\n" in label]:
        raise BundleError(
            f"{where}: label {bad[0]!r} in {LABELS_FILE} contains a comma or a line break; a comma separates the "
            "entries of a result's topk field (docs/results-schema.md). Rename it (the model stays valid) and "
            "export again."
        )


def file_digest(path: Path) -> str:
    """SHA-256 of a file, or of a directory's files (sorted relative paths and contents)."""
    h = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(child.relative_to(path).as_posix().encode())
            h.update(hashlib.sha256(child.read_bytes()).digest())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def write_spec(root: Path, spec: BundleSpec) -> Path:
    path = root / SPEC_FILE
    path.write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
    return path
