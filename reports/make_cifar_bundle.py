"""Measure the CIFAR-10 camera runs (reports/make_cifar_runs.py) through LiteRT, float32 and INT8, on the 10,000
test photos, write reports/cifar-camera.md, and export the distilled + pruned + INT8 model as a bundle.

Every number in the report is measured here or read from the runs' metrics.json; nothing is typed in by hand.

    .venv/bin/python reports/make_cifar_bundle.py ../shared/data/cifar-10-images --runs runs/cifar \
        --bundle bundles/cifar-camera-96 --report reports/cifar-camera.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np

from common.bundle import InputSpec
from model.data import load_class_images
from model.evaluate import evaluate_tflite, plot_confusion
from model.report import machine

RUNS = [("teacher", "teacher, camera-vgg width 1.0"), ("student", "student from scratch, camera-vgg width 0.5"),
        ("distilled", "student distilled from the teacher"), ("pruned", "distilled + structured-pruned")]
TARGET = 0.85  # the bar for the shipped camera bundle on the 10,000 test photos
COPIED = ("config.json", "metrics.json", "history.csv", "history.json", "curves.png", "sparsity.json")


def measure(runs: Path, x_test: np.ndarray, y_test: np.ndarray, calib: np.ndarray,
            classes: int) -> dict[str, dict[str, Any]]:
    from model.pipeline import FLOAT_TFLITE, INT8_TFLITE, KERAS_FILE, load_keras
    from model.quantize import to_float_tflite, to_int8_tflite

    out: dict[str, dict[str, Any]] = {}
    for name, _ in RUNS:
        run = runs / name
        if not (run / KERAS_FILE).is_file():
            continue
        model = load_keras(run / KERAS_FILE)
        (run / FLOAT_TFLITE).write_bytes(to_float_tflite(model))
        (run / INT8_TFLITE).write_bytes(to_int8_tflite(model, calib, len(calib)))
        out[name] = {"meta": json.loads((run / "metrics.json").read_text()),
                     "command": json.loads((run / "config.json").read_text()).get("command", "?"),
                     "float": evaluate_tflite(run / FLOAT_TFLITE, x_test, y_test, classes),
                     "int8": evaluate_tflite(run / INT8_TFLITE, x_test, y_test, classes)}
        print(name, {k: out[name][k]["accuracy"] for k in ("float", "int8")}, file=sys.stderr, flush=True)
    return out


def row(label: str, m: dict[str, Any], meta: dict[str, Any]) -> str:
    return (f"| {label} | {m['accuracy']:.4f} | {m['f1']:.4f} | {1000 / m['latency_ms_b1']:,.0f} | "
            f"{m['throughput_b32']:,.0f} | {m['size_bytes'] / 1024:,.1f} | {meta.get('params', 0):,} | "
            f"{meta.get('epochs_run', '?')} |")


def report_lines(results: dict[str, dict[str, Any]], spec: InputSpec, command: str, bundle: Path) -> list[str]:
    head = ("| model | accuracy | F1 | img/s b=1 | img/s b=32 | size (KiB) | params | epochs |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = ["# CIFAR-10 camera model: teacher, student, distilled, distilled + pruned + INT8", "",
             f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M UTC} by `{command}`.", "",
             f"Machine: {machine()}. Input {spec.height}x{spec.width}x{spec.channels} {spec.color}, "
             f"resize `{spec.resize}` (the CIFAR photos are 32x32, prepared by `common.preprocess` as frames are). "
             "LiteRT with 2 threads; img/s b=1 from the median of 200 single-image calls, b=32 a 1 s loop. "
             "Accuracy and macro F1 on the 10,000 test photos.", "", head]
    for name, label in RUNS:
        if name in results:
            lines.append(row(f"{label} (float32)", results[name]["float"], results[name]["meta"]))
    if "pruned" in results:
        lines.append(row("**distilled + pruned + INT8 (the bundle)**", results["pruned"]["int8"],
                         results["pruned"]["meta"]))
    lines += ["", "## Checks (computed from the table)", ""]
    if "pruned" in results:
        q, f = results["pruned"]["int8"]["accuracy"], results["pruned"]["float"]["accuracy"]
        lines.append(f"- INT8 vs its float parent: {q:.4f} vs {f:.4f} ({100 * (q - f):+.2f} pts; the bar: within "
                     "1 pt).")
        lines.append(f"- The bundle against the target of {TARGET:.2f}: {q:.4f} "
                     f"({'met' if q >= TARGET else f'not met, {100 * (TARGET - q):.1f} pts short'}).")
    if "distilled" in results and "student" in results:
        d, s = results["distilled"]["float"]["accuracy"], results["student"]["float"]["accuracy"]
        verdict = "at least 1 pt better" if d - s >= 0.01 else "NOT 1 pt better"
        lines.append(f"- Distilled student vs the same student trained alone, equal epochs: {d:.4f} vs {s:.4f} "
                     f"({100 * (d - s):+.2f} pts: {verdict}).")
    lines += ["", f"Bundle: `{bundle}`. Run commands (from each run's config.json):", ""]
    lines += [f"- `{n}`: `{results[n]['command']}`" for n, _ in RUNS if n in results]
    return [*lines, ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cifar", type=Path)
    ap.add_argument("--runs", type=Path, default=Path("runs/cifar"))
    ap.add_argument("--bundle", type=Path, default=Path("bundles/cifar-camera-96"))
    ap.add_argument("--report", type=Path, default=Path("reports/cifar-camera.md"))
    ap.add_argument("--samples", type=int, default=300, help="calibration photos (from the training folder)")
    args = ap.parse_args()
    command = shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv])
    from model.bundle import export_bundle
    from model.pipeline import INT8_TFLITE, KERAS_FILE, load_keras

    cfg = json.loads((args.runs / "teacher" / "config.json").read_text())
    spec = InputSpec(**cfg["input"])
    labels = sorted(p.name for p in (args.cifar / "test").iterdir() if p.is_dir())
    test = load_class_images(args.cifar / "test", labels, spec)
    calib_all = load_class_images(args.cifar / "train", labels, spec).x
    calib = calib_all[np.random.default_rng(0).choice(len(calib_all), args.samples, replace=False)]
    results = measure(args.runs, test.x, test.y, calib, len(labels))
    if "pruned" in results:
        shipped = results["pruned"]["int8"]
        metrics = {k: v for k, v in shipped.items() if k != "confusion_matrix"}
        export_bundle(args.bundle, load_keras(args.runs / "pruned" / KERAS_FILE),
                      (args.runs / "pruned" / INT8_TFLITE).read_bytes(), labels, input_spec=spec,
                      name="cifar-camera", version="1.0.0", command=command, metrics=metrics,
                      extra={"runs": {n: r["meta"] for n, r in results.items()}, "calibration_samples": args.samples,
                             "dataset": "CIFAR-10 (10,000 test photos)"})
        plot_confusion(shipped["confusion_matrix"], labels, args.report.with_suffix(".confusion.png"),
                       "cifar-camera (INT8)")
    copies = args.report.parent / "cifar-runs"
    for name in results:
        (copies / name).mkdir(parents=True, exist_ok=True)
        for f in COPIED:
            if (args.runs / name / f).is_file():
                shutil.copy(args.runs / name / f, copies / name / f)
    (copies / "measured.json").write_text(json.dumps(
        {n: {k: {m: v for m, v in r[k].items() if m != "confusion_matrix"} for k in ("float", "int8")}
         | {"command": r["command"]}
         for n, r in results.items()}, indent=1) + "\n")
    args.report.write_text("\n".join(report_lines(results, spec, command, args.bundle)))
    print(args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
