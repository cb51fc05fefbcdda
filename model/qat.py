"""Quantization-aware fine-tuning, optionally preserving the sparsity of a magnitude-pruned model
(tfmot ``Default8BitPrunePreserveQuantizeScheme``): recovers accuracy that plain post-training INT8 can lose.

Only layers tfmot has quantize configs for are annotated (it refuses e.g. ``Rescaling``); the converter
still quantizes the rest from the calibration images, so the result is full-integer like any other model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from model.data import Dataset
from model.train import TrainConfig, fit

ANNOTATED = ("Conv2D", "Dense", "BatchNormalization", "ReLU", "MaxPooling2D", "GlobalAveragePooling2D",
             "DepthwiseConv2D", "Add", "Flatten", "Dropout")


def _output_only_config() -> Any:
    """QuantizeConfig for weightless layers tfmot does not know (Rescaling): fake-quantize the output only."""
    import tensorflow_model_optimization as tfmot

    quantizers = tfmot.quantization.keras.quantizers

    class RescaleOutputConfig(tfmot.quantization.keras.QuantizeConfig):
        def get_weights_and_quantizers(self, layer: Any) -> list[Any]:
            return []

        def get_activations_and_quantizers(self, layer: Any) -> list[Any]:
            return []

        def set_quantize_weights(self, layer: Any, quantize_weights: list[Any]) -> None:
            pass

        def set_quantize_activations(self, layer: Any, quantize_activations: list[Any]) -> None:
            pass

        def get_output_quantizers(self, layer: Any) -> list[Any]:
            return [quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                      narrow_range=False)]

        def get_config(self) -> dict[str, Any]:
            return {}

    return RescaleOutputConfig


def annotate(model: Any) -> tuple[Any, dict[str, Any]]:
    """Annotate every layer for QAT; returns the annotated model and the custom objects it needs."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    output_only = _output_only_config()
    annotate_layer = tfmot.quantization.keras.quantize_annotate_layer

    def clone(layer: Any) -> Any:
        if type(layer).__name__ in ANNOTATED:
            return annotate_layer(layer)
        if type(layer).__name__ == "Rescaling":
            return annotate_layer(layer, quantize_config=output_only())
        return layer

    return keras.models.clone_model(model, clone_function=clone), {"RescaleOutputConfig": output_only}


def quantize_aware(model: Any, data: Dataset, cfg: TrainConfig, out: Path, preserve_sparsity: bool = True) -> Any:
    """Fine-tune ``model`` with fake-quant ops for ``cfg.epochs``; returns the QAT model (convert it to INT8)."""
    import tensorflow_model_optimization as tfmot

    scheme = (tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme() if preserve_sparsity
              else tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme())
    annotated, custom = annotate(model)
    with tfmot.quantization.keras.quantize_scope(custom):
        qat = tfmot.quantization.keras.quantize_apply(annotated, scheme)
    fit(qat, data, dataclasses.replace(cfg, early_stopping=False, warmup_epochs=0.0), out)
    return qat
