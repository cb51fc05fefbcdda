"""TensorFlow process setup in one place: legacy Keras, thread pools, seeds, quiet logs."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np


def setup_tf(threads: int = 2, seed: int = 0) -> Any:
    """Import TensorFlow configured for this machine and return the module."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # already initialised in this process (tests build several models); keep the first setting
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    return tf
