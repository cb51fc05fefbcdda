"""Keras -> LiteRT conversion: float32, and calibrated full-integer INT8 (uint8 in, int8 logits out).

INT8 conversion uses ``TFLITE_BUILTINS_INT8`` only, so a layer without an integer kernel makes the
converter fail loudly instead of leaving a float op behind; ``assert_integer_only`` double-checks the result.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from common.bundle import QuantSpec
from common.errors import BundleError
from model.runtime import setup_tf

FLOAT_DTYPES = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64)}


def to_float_tflite(model: Any) -> bytes:
    tf = setup_tf()
    return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


def to_int8_tflite(model: Any, calibration: np.ndarray, samples: int = 300, seed: int = 0) -> bytes:
    """Full-integer INT8 calibrated on ``samples`` raw uint8 images drawn (seeded) from ``calibration``."""
    tf = setup_tf()
    idx = np.random.default_rng(seed).permutation(len(calibration))[:samples]
    images = calibration[idx].astype(np.float32)

    def representative() -> Iterator[list[np.ndarray]]:
        for img in images:
            yield [img[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.int8
    content = bytes(converter.convert())
    assert_integer_only(content)
    return content


def _interpreter(content: bytes) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=content)


def float_tensors(content: bytes) -> list[str]:
    """Names of every float tensor in a LiteRT model (empty for a full-integer model)."""
    interp = _interpreter(content)
    return [t["name"] for t in interp.get_tensor_details() if np.dtype(t["dtype"]) in FLOAT_DTYPES]


def assert_integer_only(content: bytes) -> None:
    bad = float_tensors(content)
    if bad:
        raise BundleError(f"INT8 model still holds {len(bad)} float tensors (e.g. {bad[:3]}); refusing to ship it.")


def quant_spec(content: bytes) -> QuantSpec:
    interp = _interpreter(content)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    return QuantSpec(
        input_scale=float(inp["quantization"][0]), input_zero_point=int(inp["quantization"][1]),
        output_scale=float(out["quantization"][0]), output_zero_point=int(out["quantization"][1]),
        output_dtype=np.dtype(out["dtype"]).name,
    )
