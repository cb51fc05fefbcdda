#!/usr/bin/env bash
# Regenerates every Fashion-MNIST run, the shipped bundle and reports/fashion-mnist.md.
# Steps whose output exists are skipped, so the script resumes after an interruption.
# Takes ~45 min on 2 CPU cores. Run from the repo root with the [train] extra installed.
set -euo pipefail
VIGIL=${VIGIL:-vigil}
SHIP=${SHIP:-vgg-bn-thin60}   # which run's float model goes into bundles/fashion-mnist
SHIP_INT8=${SHIP_INT8:-}

step() { [ -f "$1" ] || { shift; echo "+ $*"; "$@"; }; }

step runs/vgg-bn/model.keras.h5 $VIGIL model train --arch vgg-bn --epochs 18 --patience 5 --out runs/vgg-bn
step runs/vgg-bn/model.int8.tflite $VIGIL model quantize --model runs/vgg-bn/model.keras.h5

step runs/vgg-bn-thin50/model.keras.h5 $VIGIL model structured --model runs/vgg-bn/model.keras.h5 \
    --keep 0.5 --criterion bn-gamma --epochs 5 --lr 1e-3 --out runs/vgg-bn-thin50
step runs/vgg-bn-thin50/model.int8.tflite $VIGIL model quantize --model runs/vgg-bn-thin50/model.keras.h5
step runs/vgg-bn-thin60/model.keras.h5 $VIGIL model structured --model runs/vgg-bn/model.keras.h5 \
    --keep 0.6 --criterion bn-gamma --epochs 8 --lr 1e-3 --threads 1 --out runs/vgg-bn-thin60
step runs/vgg-bn-thin60/model.int8.tflite $VIGIL model quantize --model runs/vgg-bn-thin60/model.keras.h5

step runs/vgg-bn-pruned80/model.keras.h5 $VIGIL model prune --model runs/vgg-bn/model.keras.h5 \
    --sparsity 0.8 --epochs 3 --lr 5e-4 --out runs/vgg-bn-pruned80
step runs/vgg-bn-pruned80/model.int8.tflite $VIGIL model quantize --model runs/vgg-bn-pruned80/model.keras.h5

step runs/baseline-cnn/model.keras.h5 $VIGIL model train --arch baseline-cnn --epochs 6 --out runs/baseline-cnn
step runs/baseline-cnn/model.int8.tflite $VIGIL model quantize --model runs/baseline-cnn/model.keras.h5

step runs/mobilenet-v2-style/model.keras.h5 $VIGIL model train --arch mobilenet-v2-style --epochs 4 \
    --out runs/mobilenet-v2-style
step runs/mobilenet-v2-style/model.int8.tflite $VIGIL model quantize --model runs/mobilenet-v2-style/model.keras.h5

step runs/vgg-bn-pruned80-qat4/model.int8.tflite $VIGIL model qat --model runs/vgg-bn-pruned80/model.keras.h5 \
    --epochs 4 --lr 5e-4 --out runs/vgg-bn-pruned80-qat4

# Keep the small artifacts in git so the bundle and report can be rebuilt from a clean clone.
for run in runs/*/; do
    dest=reports/fashion-mnist-runs/$(basename "$run")
    mkdir -p "$dest"
    for f in model.keras.h5 model.float.tflite model.int8.tflite metrics.json config.json curves.png \
             history.csv quantize.json sparsity.json; do
        [ ! -f "$run/$f" ] || cp "$run/$f" "$dest/"
    done
done
# SHIP_INT8 (optional): ship that run's INT8 file (e.g. the QAT run) with $SHIP's float model.
$VIGIL model bundle --model "reports/fashion-mnist-runs/$SHIP/model.keras.h5" --out bundles/fashion-mnist \
    --version 1.0.0 ${SHIP_INT8:+--int8 reports/fashion-mnist-runs/$SHIP_INT8/model.int8.tflite}
$VIGIL model report --runs reports/fashion-mnist-runs --bundle bundles/fashion-mnist --out reports/fashion-mnist.md
