"""Train the RGB camera model's runs on CIFAR-10 photos at a camera input size: a teacher, a student from scratch,
the student distilled from the teacher (equal epochs), and the distilled student structured-pruned and
fine-tuned. Each run directory holds model.keras.h5, config.json (with this command) and metrics.json;
`vigil model bundle` and `vigil model report` take it from there (reports/make-cifar-bundle.sh).

CIFAR-10 is data, not part of the product: pass the folder holding train/<class>/*.jpg and test/<class>/*.jpg.

    .venv/bin/python reports/make_cifar_runs.py ../shared/data/cifar-10-images --out runs/cifar \
        --size 96 --epochs 6 --teacher-width 1.0 --student-width 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from common.bundle import InputSpec
from model.data import load_image_folder


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cifar", type=Path, help="folder with train/ and test/ class folders")
    ap.add_argument("--out", type=Path, default=Path("runs/cifar"))
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--prune-epochs", type=int, default=2)
    ap.add_argument("--teacher-width", type=float, default=1.0)
    ap.add_argument("--student-width", type=float, default=0.5)
    ap.add_argument("--keep", type=float, default=0.75, help="channels kept by structured pruning")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--only", nargs="*", default=None, help="teacher student distilled pruned")
    return ap.parse_args()


def main() -> int:
    """Each stage is the `vigil model` command's own run function (model/pipeline.py) on the same data."""
    args = parse_args()
    command = shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv])
    from model.pipeline import KERAS_FILE, distill_run, structured_run, train_run
    from model.runtime import setup_tf
    from model.train import TrainConfig

    setup_tf(2, 0)
    spec = InputSpec(height=args.size, width=args.size, channels=3, color="rgb", resize="center_crop")
    t0 = time.time()
    data = load_image_folder(args.cifar / "train", spec, test_root=args.cifar / "test")  # val: 10% of train
    print(f"loaded {len(data.train.y)} train, {len(data.val.y)} val, {len(data.test.y)} test at {spec.shape} in "
          f"{time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    # Shift + flip (TrainConfig's default), not the camera augmentation of `vigil model train`: at ~6 min an
    # epoch for the teacher on 2 cores, a budget this short was spent on epochs instead.
    shift = max(2, args.size // 16)  # random shift of up to 1/16 of the side (2 px at CIFAR's 32)
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=2e-3, shift=shift, flip=True, threads=2, patience=99)
    tune = TrainConfig(**{**cfg.__dict__, "epochs": args.prune_epochs, "lr": 1e-3})
    out = args.out
    stages = {
        "teacher": lambda: train_run(data, "camera-vgg", cfg, out / "teacher", command=command,
                                     width=args.teacher_width),
        "student": lambda: train_run(data, "camera-vgg", cfg, out / "student", command=command,
                                     width=args.student_width),
        "distilled": lambda: distill_run(data, out / "teacher" / KERAS_FILE, "camera-vgg", args.student_width, cfg,
                                         out / "distilled", temperature=args.temperature, alpha=args.alpha,
                                         command=command),
        "pruned": lambda: structured_run(data, out / "distilled" / KERAS_FILE, args.keep, "bn-gamma", tune,
                                         out / "pruned", command=command),
    }
    summary = {}
    for name in args.only or stages:
        summary[name] = stages[name]()
        print(json.dumps({name: summary[name]}, default=str), file=sys.stderr, flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
