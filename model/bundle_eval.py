"""``vigil model evaluate`` for a bundle: LiteRT + numpy only, no TensorFlow in the process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.bundle import Bundle
from common.errors import ConfigError
from common.settings import DEFAULT_BUNDLE
from model.data import FASHION_LABELS, load_fashion_split
from model.evaluate import evaluate_tflite, plot_confusion


def evaluate_bundle(bundle_dir: Path | None, data_path: Path | None = None, threads: int = 2,
                    limit: int | None = None, confusion_png: Path | None = None) -> dict[str, Any]:
    bundle = Bundle.load(bundle_dir or DEFAULT_BUNDLE)
    if bundle.labels != FASHION_LABELS:  # another dataset's classes: a Fashion-MNIST score would mean nothing
        raise ConfigError(f"bundle {bundle.root} classifies {', '.join(bundle.labels[:8])}"
                          f"{', ...' if len(bundle.labels) > 8 else ''}, not Fashion-MNIST's classes; `vigil model "
                          "evaluate` measures on the Fashion-MNIST test set only. Its export (`vigil model bundle "
                          "--data ...`) measured it on its own data: see metrics in its spec.json.")
    test = load_fashion_split("test", data_path).head(limit)
    metrics = evaluate_tflite(bundle.tflite_path, test.x, test.y, bundle.spec.num_classes, threads)
    if confusion_png is not None:
        title = f"{bundle.spec.name} {bundle.version}"
        plot_confusion(metrics["confusion_matrix"], bundle.labels, confusion_png, title)
    return {"bundle": str(bundle.root), "version": bundle.version, **metrics}


def render_metrics(metrics: dict[str, Any]) -> str:
    lines = [f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}"
             for k, v in metrics.items() if k != "confusion_matrix"]
    return "\n".join(lines)
