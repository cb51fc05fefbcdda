#!/usr/bin/env bash
# Regenerates bundles/live-mnv2-160: the camera-sized model `vigil bench live` uses by default.
# A Keras MobileNetV2 (width 1.0) that runs at 160x160 inside (the 28x28 Fashion-MNIST input is resized in the
# model), trained briefly from scratch on 6,000 images. It exists to give the live bench a realistic per-frame
# cost (~the cost of a surveillance classifier), not accuracy: the bundle's metrics.json says what it scores.
# Takes ~20 min on 2 CPU cores. Run from the repo root with the [train] extra installed.
set -euo pipefail
VIGIL=${VIGIL:-vigil}
RUN=${RUN:-runs/live-mnv2-160}
[ -f "$RUN/model.keras.h5" ] || $VIGIL model train --arch keras-mobilenet-v2 --size 160 --epochs 2 --limit 6000 \
    --no-augment --out "$RUN"
$VIGIL model bundle --model "$RUN/model.keras.h5" --out bundles/live-mnv2-160 --name live-mnv2-160 --version 0.1.0
