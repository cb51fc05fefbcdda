"""``vigil model report``: re-measure every run's LiteRT models on the test set and write the markdown report.

Every number in the report is measured here (LiteRT, no TensorFlow) or read from the run's own
metrics.json (training epochs, sparsity, parameter count); nothing is typed in by hand.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from common.bundle import Bundle
from model.data import FASHION_LABELS, load_fashion_split
from model.evaluate import evaluate_tflite, plot_confusion

FLOAT_TFLITE = "model.float.tflite"
INT8_TFLITE = "model.int8.tflite"
COLUMNS = ["accuracy", "precision", "recall", "f1", "latency_ms_b1", "throughput_b8", "throughput_b32",
           "size_bytes", "gzip_bytes"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, ai-edge-litert {version('ai-edge-litert')}")


def measure_runs(runs: Path, x: Any, y: Any, threads: int) -> dict[str, dict[str, Any]]:
    """run name -> {"meta": metrics.json, "float": metrics, "int8": metrics} for each quantized run."""
    results: dict[str, dict[str, Any]] = {}
    for run in sorted(p for p in runs.iterdir() if (p / INT8_TFLITE).is_file()):
        meta = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        results[run.name] = {"meta": meta}
        for kind, fname in (("float", FLOAT_TFLITE), ("int8", INT8_TFLITE)):
            if (run / fname).is_file():
                results[run.name][kind] = evaluate_tflite(run / fname, x, y, len(FASHION_LABELS), threads)
    return results


def _row(label: str, m: dict[str, Any], meta: dict[str, Any]) -> str:
    params = f"{meta['params']:,}" if isinstance(meta.get("params"), int) else "?"
    return (f"| {label} | {m['accuracy']:.4f} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | "
            f"{m['latency_ms_b1']:.3f} | {m['throughput_b8']:,.0f} | {m['throughput_b32']:,.0f} | "
            f"{m['size_bytes'] / 1024:,.1f} | {m['gzip_bytes'] / 1024:,.1f} | {params} | "
            f"{meta.get('epochs_run', '?')} |")


HEADER = ("| model | accuracy | precision | recall | F1 | latency b=1 (ms) | img/s b=8 | img/s b=32 | size (KiB) "
          "| gzip (KiB) | params | epochs |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def headline(results: dict[str, dict[str, Any]], shipped: dict[str, Any], bundle: Bundle) -> list[str]:
    lines = ["## The paper's table, on Fashion-MNIST", "", HEADER]
    paper_rows = (("baseline-cnn", "baseline CNN (float32)"), ("mobilenet-v2-style", "MobileNetV2-style (float32)"))
    for run, label in paper_rows:
        if run in results:
            lines.append(_row(label, results[run]["float"], results[run]["meta"]))
    src = bundle.spec.extra.get("run_metrics", {})
    lines.append(_row(f"optimized: shipped bundle {bundle.version} (INT8)", shipped, src))
    return [*lines, ""]


def all_runs(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["## Every run, float32 and INT8 LiteRT", "", HEADER]
    for run, r in results.items():
        for kind in ("float", "int8"):
            if kind in r:
                lines.append(_row(f"{run} ({'float32' if kind == 'float' else 'INT8'})", r[kind], r["meta"]))
    return [*lines, ""]


def checks(results: dict[str, dict[str, Any]]) -> list[str]:
    """The acceptance ratios, each computed from the measurements above."""
    lines = ["## Compression checks (computed from the measurements above)", ""]
    for run, r in results.items():
        f, q = r.get("float"), r.get("int8")
        if f and q:
            lines.append(f"- `{run}`: INT8 accuracy {q['accuracy']:.4f} vs float {f['accuracy']:.4f} "
                         f"(Δ {100 * (q['accuracy'] - f['accuracy']):+.2f} pts); INT8 file is "
                         f"1/{f['size_bytes'] / q['size_bytes']:.2f} of float; INT8 gzip is "
                         f"1/{f['size_bytes'] / q['gzip_bytes']:.2f} of the float file.")
        parent = Path(str(r["meta"].get("parent", ""))).parent.name
        if parent in results and q:
            pq = results[parent]["int8"]
            lines.append(f"  - vs parent `{parent}` (INT8): accuracy Δ {100 * (q['accuracy'] - pq['accuracy']):+.2f}"
                         f" pts, throughput b=32 ×{q['throughput_b32'] / pq['throughput_b32']:.2f}, "
                         f"gzip ×{q['gzip_bytes'] / pq['gzip_bytes']:.2f}"
                         + (f", weight sparsity {r['meta']['sparsity']:.3f}" if "sparsity" in r["meta"] else "")
                         + (f", channels {r['meta']['channels']}" if "channels" in r["meta"] else ""))
    return [*lines, ""]


def write_report(runs: Path, bundle_dir: Path, out: Path, data_path: Path | None = None, threads: int = 2,
                 command: str = "vigil model report") -> Path:
    test = load_fashion_split("test", data_path)
    bundle = Bundle.load(bundle_dir)
    results = measure_runs(runs, test.x, test.y, threads)
    shipped = evaluate_tflite(bundle.tflite_path, test.x, test.y, bundle.spec.num_classes, threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    cm_png = plot_confusion(shipped["confusion_matrix"], bundle.labels, out.with_suffix(".confusion.png"),
                            f"{bundle.spec.name} {bundle.version} (INT8)")
    lines = [
        "# Fashion-MNIST: baseline vs MobileNetV2-style vs optimized", "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M UTC} by `{command}`.", "",
        f"Machine: {machine()}. LiteRT with {threads} threads; latency is the median of 200 single-image calls, "
        "throughput a 1 s loop at a fixed batch. Accuracy etc. on the 10,000 official test images; precision, "
        "recall, F1 are macro averages.", "",
        *headline(results, shipped, bundle),
        f"Shipped bundle: `{bundle.root}` ({bundle.spec.architecture}, float source "
        f"`{bundle.spec.extra.get('source_model')}`) made by `{bundle.spec.command}`; "
        f"peak RSS of this report process {shipped['peak_rss_mb']:.0f} MB. "
        f"Confusion matrix: ![confusion]({cm_png.name})", "",
        *all_runs(results), *checks(results),
        "Magnitude pruning only makes the file compress better (gzip); LiteRT runs the zeros densely, so it is "
        "not faster. Structured pruning removes channels and is what changes CPU throughput.", "",
        "Run commands (from each run's config.json):", "",
        *[f"- `{n}`: `{_run_command(runs / n)}`" for n in results], "",
    ]
    out.write_text("\n".join(lines))
    return out


def _run_command(run: Path) -> str:
    cfg = run / "config.json"
    return str(json.loads(cfg.read_text()).get("command", "?")) if cfg.is_file() else "?"
