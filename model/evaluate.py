"""Evaluate a LiteRT model: accuracy, macro P/R/F1, confusion matrix, latency, throughput, size, memory.

Imports common.* and numpy only (matplotlib lazily for the PNG), never TensorFlow: a bundle is evaluated
exactly as a CPU worker would run it.
"""

from __future__ import annotations

import gzip
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.inference import Classifier


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1 and the confusion matrix (rows: true class, columns: predicted).
    The macro means are over the classes that occur, as a true or a predicted class (scikit-learn's rule): a
    subset of the data without some class is not marked down for it."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    precision, recall, f1 = _per_class_scores(cm)
    seen = present_classes(cm)
    return {
        "accuracy": float(np.trace(cm) / max(1, cm.sum())),
        "precision": float(precision[seen].mean()) if seen else 0.0,
        "recall": float(recall[seen].mean()) if seen else 0.0,
        "f1": float(f1[seen].mean()) if seen else 0.0,
        "confusion_matrix": cm.tolist(),
    }


def present_classes(cm: np.ndarray | list[list[int]]) -> list[int]:
    """The classes that occur in a confusion matrix, as a true or a predicted class, in index order."""
    arr = np.asarray(cm)
    return [int(i) for i in np.flatnonzero(arr.sum(axis=0) + arr.sum(axis=1))]


def per_class(cm: list[list[int]], labels: list[str]) -> list[dict[str, Any]]:
    """One row per class that occurs (``present_classes``): its label, support (true images), precision,
    recall and F1."""
    arr = np.asarray(cm)
    precision, recall, f1 = _per_class_scores(arr)
    return [{"label": labels[i], "support": int(arr[i].sum()), "precision": float(precision[i]),
             "recall": float(recall[i]), "f1": float(f1[i])} for i in present_classes(arr)]


def _per_class_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of every class; 0 where a class is never predicted or never true."""
    tp = np.diag(cm).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(tp / cm.sum(axis=0))
        recall = np.nan_to_num(tp / cm.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return precision, recall, f1


def predict(clf: Classifier, x: np.ndarray, batch: int = 64) -> np.ndarray:
    preds = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        if len(chunk) < batch:  # keep one interpreter per batch size: pad the tail instead of resizing
            pad = np.zeros((batch - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
            preds.append(np.argmax(clf.logits(np.concatenate([chunk, pad])), axis=1)[: len(chunk)])
        else:
            preds.append(np.argmax(clf.logits(chunk), axis=1))
    return np.concatenate(preds)


def throughput(clf: Classifier, x: np.ndarray, batch: int, seconds: float = 1.0) -> float:
    """Images per second at a fixed batch size, after one warm-up call."""
    reps = int(np.ceil(batch / len(x)))
    data = np.concatenate([x] * reps)[:batch] if reps > 1 else x[:batch]
    clf.logits(data)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        clf.logits(data)
        n += 1
    return n * batch / elapsed


def latency_ms(clf: Classifier, x: np.ndarray, runs: int = 200) -> float:
    """Median single-image latency in milliseconds."""
    clf.logits(x[:1])
    times = []
    for i in range(runs):
        img = x[i % len(x) : i % len(x) + 1]
        start = time.perf_counter()
        clf.logits(img)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def file_sizes(path: Path) -> dict[str, int]:
    raw = path.read_bytes()
    return {"size_bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, compresslevel=9))}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate_tflite(path: Path, x: np.ndarray, y: np.ndarray, num_classes: int, threads: int = 2,
                    throughput_batches: tuple[int, ...] = (8, 32), seconds: float = 1.0) -> dict[str, Any]:
    """All metrics for one LiteRT model on (x uint8, y). Speed uses ``threads`` interpreter threads."""
    clf = Classifier(Path(path), num_threads=threads)
    x = x.astype(clf.input_dtype) if clf.input_dtype != np.float32 else x.astype(np.float32)
    metrics = classification_metrics(y, predict(clf, x), num_classes)
    metrics["latency_ms_b1"] = latency_ms(clf, x)
    for b in throughput_batches:
        metrics[f"throughput_b{b}"] = throughput(clf, x, b, seconds)
    metrics.update(file_sizes(Path(path)))
    metrics.update({"threads": threads, "num_images": len(y), "peak_rss_mb": peak_rss_mb()})
    return metrics


def plot_confusion(cm: list[list[int]], labels: list[str], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(arr, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            ax.text(j, i, str(arr[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if arr[i, j] > arr.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
