"""Magnitude (unstructured) pruning with tfmot: PolynomialDecay to a target sparsity, fine-tune, strip.

This shrinks the *compressed* model (zeros gzip well); LiteRT still runs the weights densely, so it does not
make CPU inference faster. ``model.structured`` is the one that removes compute.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from model.data import Dataset
from model.train import TrainConfig, fit

PRUNABLE = ("Conv2D", "Dense")


def sparsity_report(model: Any) -> dict[str, Any]:
    """Fraction of exactly-zero kernel weights per Conv2D/Dense layer, and over all of them."""
    layers: dict[str, float] = {}
    zeros = total = 0
    for layer in model.layers:
        if type(layer).__name__ in PRUNABLE:
            kernel = np.asarray(layer.kernel.numpy())
            layers[layer.name] = float(np.mean(kernel == 0))
            zeros += int(np.sum(kernel == 0))
            total += kernel.size
    return {"layers": layers, "total": zeros / max(1, total), "weights": total}


def wrap_for_pruning(model: Any, sparsity: float, end_step: int) -> Any:
    """Wrap only Conv2D/Dense (tfmot refuses e.g. Rescaling), keeping every other layer and all weights."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    # Masks update only every `frequency` steps and never after end_step: make end_step a multiple of it
    # so the final mask really reaches the target sparsity.
    frequency = max(1, min(50, end_step // 10))
    end_step = max(frequency, end_step // frequency * frequency)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0, end_step=end_step, frequency=frequency)

    def clone(layer: Any) -> Any:
        if type(layer).__name__ in PRUNABLE:
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return keras.models.clone_model(model, clone_function=clone)


def magnitude_prune(model: Any, data: Dataset, sparsity: float, cfg: TrainConfig, out: Path,
                    ramp_fraction: float = 0.6) -> tuple[Any, dict[str, Any]]:
    """Prune ``model`` to ``sparsity`` while fine-tuning for ``cfg.epochs``; returns (stripped model, report).

    Sparsity ramps up over the first ``ramp_fraction`` of the steps; the rest fine-tunes at full sparsity.
    """
    import tensorflow_model_optimization as tfmot

    cfg = dataclasses.replace(cfg, early_stopping=False, warmup_epochs=0.0)
    n_train = len(data.train.head(cfg.limit).y)
    steps = int(np.ceil(n_train / cfg.batch_size)) * max(1, cfg.epochs)
    wrapped = wrap_for_pruning(model, sparsity, int(steps * ramp_fraction))
    fit(wrapped, data, cfg, out, extra_callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    return stripped, sparsity_report(stripped)
