"""``vigil model evaluate`` for a bundle: LiteRT + numpy only, no TensorFlow in the process.

What it scores (an ``EvalSet``): the Fashion-MNIST test set, an image folder with one subfolder per class, or a
list of image files; all of them, or those at given indices. The images of a folder or a list are prepared as a
producer prepares a frame, ``preprocess(read_image(path), bundle.spec.input)``, so that the offline scores
compare with an end-to-end run over the same images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.bundle import Bundle
from common.errors import ConfigError, DataError
from common.images import read_image
from common.preprocess import preprocess
from common.settings import DEFAULT_BUNDLE
from model.data import FASHION_LABELS, class_folders, load_class_images, load_fashion_split
from model.evaluate import evaluate_tflite, per_class, plot_confusion, present_classes

FASHION_TEST = "fashion-mnist test set"
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


@dataclass(frozen=True)
class EvalSet:
    """Images prepared for a bundle (uint8, N x H x W x C), their classes as indices into its labels, and
    what they are, for the report."""

    name: str
    x: np.ndarray
    y: np.ndarray

    def select(self, indices: list[range] | None, limit: int | None) -> EvalSet:
        """The images at ``indices`` (positions in this set's order, each once, ascending), then the first
        ``limit`` of those."""
        if indices is not None:
            if (last := max(r[-1] for r in indices)) >= len(self.y):
                raise ConfigError(f"index {last} is outside the {self.name} ({len(self.y)} images, indices "
                                  f"0-{len(self.y) - 1}). Pass indices below {len(self.y)}.")
            chosen = np.unique(np.concatenate([np.arange(r.start, r.stop) for r in indices]))
            return EvalSet(self.name, self.x[chosen], self.y[chosen]).select(None, limit)
        return self if limit is None else EvalSet(self.name, self.x[:limit], self.y[:limit])


def evaluate_bundle(bundle_dir: Path | None, data_path: Path | None = None, threads: int = 2,
                    limit: int | None = None, confusion_png: Path | None = None, *, data: Path | None = None,
                    files: Path | None = None, indices: list[range] | None = None) -> dict[str, Any]:
    """Score the bundle's model on ``files`` (a list of images), else the class folders of ``data``, else the
    Fashion-MNIST test set; only the images at ``indices`` and the first ``limit`` of them when given."""
    bundle = Bundle.load(bundle_dir or DEFAULT_BUNDLE)
    images = load_eval_set(bundle, data, files, data_path).select(indices, limit)
    metrics = evaluate_tflite(bundle.tflite_path, images.x, images.y, bundle.spec.num_classes, threads)
    cm = metrics["confusion_matrix"]
    if confusion_png is not None:  # only the classes that occur: a folder of 3 of 80 classes stays readable
        seen = present_classes(cm)
        title = f"{bundle.spec.name} {bundle.version} on {images.name}"
        plot_confusion(np.asarray(cm)[np.ix_(seen, seen)].tolist(), [bundle.labels[i] for i in seen],
                       confusion_png, title)
    return {"bundle": str(bundle.root), "version": bundle.version, "data": images.name, **metrics,
            "labels": bundle.labels, "per_class": per_class(cm, bundle.labels)}


def load_eval_set(bundle: Bundle, data: Path | None, files: Path | None, data_path: Path | None) -> EvalSet:
    if files is not None:
        return listed_images(files, bundle)
    if data is not None:
        return folder_images(data, bundle)
    return fashion_test_set(bundle, data_path)


def fashion_test_set(bundle: Bundle, data_path: Path | None) -> EvalSet:
    if bundle.labels != FASHION_LABELS:  # another dataset's classes: a Fashion-MNIST score would mean nothing
        raise ConfigError(f"bundle {bundle.root} classifies {', '.join(bundle.labels[:8])}"
                          f"{', ...' if len(bundle.labels) > 8 else ''}, not Fashion-MNIST's classes, so it is not "
                          "scored on the Fashion-MNIST test set. Pass its own images: --data FOLDER (one subfolder "
                          "per class) or --files LIST.txt.")
    test = load_fashion_split("test", data_path)
    return EvalSet(FASHION_TEST, test.x, test.y)


def folder_images(root: Path, bundle: Bundle) -> EvalSet:
    """``root/<class>/*`` in class then file name order; each class folder named after one of the bundle's."""
    classes = class_folders(root, "--data")
    _check_classes(bundle, classes, f"--data {root}: class folder(s)")
    split = load_class_images(root, classes, bundle.spec.input)
    to_bundle = np.asarray([bundle.labels.index(name) for name in classes], dtype=np.int64)
    return EvalSet(str(root), split.x, to_bundle[split.y])


def listed_images(list_path: Path, bundle: Bundle) -> EvalSet:
    """The images a list file names, in its order (``read_file_list``)."""
    entries = read_file_list(list_path)
    _check_classes(bundle, sorted({label for _, label in entries}), f"--files {list_path}: label(s)")
    x = np.stack([preprocess(read_image(path), bundle.spec.input) for path, _ in entries])
    y = np.asarray([bundle.labels.index(label) for _, label in entries], dtype=np.int64)
    return EvalSet(str(list_path), x, y)


def read_file_list(list_path: Path) -> list[tuple[Path, str]]:
    """``(path, label)`` for each line ``path`` or ``path<TAB>label`` (blank lines and ``#`` comments skipped).
    A relative path is relative to the list's folder; a line without a label takes its image's folder name."""
    try:
        lines = list_path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--files {list_path} cannot be read: {exc}") from exc
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, label = line.partition("\t")
        path = list_path.parent / name.strip()
        if not path.is_file():
            raise DataError(f"--files {list_path}, line {number}: {path} is not a file. Fix the line (a relative "
                            f"path is relative to {list_path.parent}) or remove it.")
        entries.append((path, label.strip() or path.parent.name))
    if not entries:
        raise DataError(f"--files {list_path} names no image: write one path per line, or path<TAB>label.")
    return entries


def parse_indices(text: str, option: str) -> list[range]:
    """``0,5,9-20`` (ranges inclusive; commas, spaces or new lines between; ``#`` comments) as ranges, checked
    against a set's size only when one is selected (``EvalSet.select``)."""
    tokens = [t for t in re.split(r"[\s,]+", re.sub(r"#[^\n]*", "", text)) if t]
    if not tokens:
        raise ConfigError(f"{option} names no index; write them like 0,5,9-20.")
    indices = []
    for token in tokens:
        if not (match := _RANGE.fullmatch(token)):
            raise ConfigError(f"{option}: {token!r} is not an index or a range; write them like 0,5,9-20.")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ConfigError(f"{option}: range {token!r} ends before it starts; write it as {last}-{first}.")
        indices.append(range(first, last + 1))
    return indices


def _check_classes(bundle: Bundle, names: list[str], what: str) -> None:
    if unknown := [name for name in names if name not in bundle.labels]:
        known = ", ".join(bundle.labels[:20]) + (", ..." if len(bundle.labels) > 20 else "")
        raise ConfigError(f"{what} not among the classes of bundle {bundle.root}: {', '.join(unknown)}. Its "
                          f"classes ({bundle.root / 'labels.txt'}): {known}. Name yours after them.")


def render_metrics(metrics: dict[str, Any]) -> str:
    """The scalar metrics one a line, then the per-class table."""
    lines = [f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}"
             for k, v in metrics.items() if not isinstance(v, list)]
    rows = metrics.get("per_class", [])
    width = max([16, *(len(row["label"]) for row in rows)])
    lines += ["", f"{'class':>{width}}  {'support':>7}  {'precision':>9}  {'recall':>6}  {'f1':>6}"]
    lines += [f"{row['label']:>{width}}  {row['support']:>7}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  "
              f"{row['f1']:>6.4f}" for row in rows]
    return "\n".join(lines)
