"""Offline model toolchain: data -> train -> prune -> quantize -> evaluate -> bundle.

tfmot needs Keras 2, so the legacy flag is set before anything can import TensorFlow.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
