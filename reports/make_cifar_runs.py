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


def main() -> int:
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
    args = ap.parse_args()
    command = shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv])

    from model.architectures import camera_vgg
    from model.distill import distill, soft_loss
    from model.pipeline import KERAS_FILE, load_keras, save_run
    from model.runtime import setup_tf
    from model.structured import prune_channels
    from model.train import TrainConfig, fit

    setup_tf(2, 0)
    spec = InputSpec(height=args.size, width=args.size, channels=3, color="rgb", resize="center_crop")
    t0 = time.time()
    data = load_image_folder(args.cifar / "train", spec, test_root=args.cifar / "test")  # val: 10% of train
    print(f"loaded {len(data.train.y)} train, {len(data.val.y)} val, {len(data.test.y)} test at {spec.shape} in "
          f"{time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    # Shift + flip (TrainConfig's default, as the committed runs were made), not the camera augmentation of
    # `vigil model train`: at ~6 min an epoch for the teacher on 2 cores, this budget is too short for it to pay.
    shift = max(2, args.size // 16)  # random shift of up to 1/16 of the side (2 px at CIFAR's 32)
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=2e-3, shift=shift, flip=True, threads=2, patience=99)
    common = {"train": cfg, "command": command}
    runs = args.only or ["teacher", "student", "distilled", "pruned"]
    summary: dict[str, dict[str, object]] = {}

    def record(name: str, model: object, metrics: dict[str, object], **config: object) -> None:
        summary[name] = save_run(model, data, args.out / name, metrics, **common, **config)
        print(json.dumps({name: summary[name]}), file=sys.stderr, flush=True)

    if "teacher" in runs:
        teacher = camera_vgg(spec.shape, 10, width=args.teacher_width)
        hist = fit(teacher, data, cfg, args.out / "teacher")
        record("teacher", teacher, {"arch": "camera-vgg", "width": args.teacher_width,
                                    "epochs_run": len(hist["loss"])}, arch="camera-vgg", width=args.teacher_width)
    if "student" in runs:
        student = camera_vgg(spec.shape, 10, width=args.student_width)
        hist = fit(student, data, cfg, args.out / "student")
        record("student", student, {"arch": "camera-vgg", "width": args.student_width,
                                    "epochs_run": len(hist["loss"])}, arch="camera-vgg", width=args.student_width)
    if "distilled" in runs:
        teacher = load_keras(args.out / "teacher" / KERAS_FILE)
        student = camera_vgg(spec.shape, 10, width=args.student_width)
        student, hist = distill(student, teacher, data, cfg, args.out / "distilled", args.temperature, args.alpha)
        record("distilled", student, {"arch": "camera-vgg", "width": args.student_width,
                                      "epochs_run": len(hist["loss"]), "teacher": str(args.out / "teacher"),
                                      "soft_loss_vs_teacher": soft_loss(student, teacher, data.val.x[:1000],
                                                                         args.temperature)},
               arch="camera-vgg", width=args.student_width, temperature=args.temperature, alpha=args.alpha)
    if "pruned" in runs:
        parent = load_keras(args.out / "distilled" / KERAS_FILE)
        thin, kept = prune_channels(parent, args.keep, "bn-gamma")
        tune = TrainConfig(**{**cfg.__dict__, "epochs": args.prune_epochs, "lr": 1e-3})
        hist = fit(thin, data, tune, args.out / "pruned")
        record("pruned", thin, {"parent": str(args.out / "distilled"), "keep": args.keep, "channels": kept,
                                "parent_params": int(parent.count_params()), "epochs_run": len(hist["loss"])},
               parent=str(args.out / "distilled"), keep=args.keep)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
