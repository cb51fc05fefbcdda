import numpy as np
import pytest

from model.quantize import float_tensors, quant_spec, to_float_tflite, to_int8_tflite


@pytest.fixture(scope="module")
def tiny_model():
    from model.architectures import vgg_bn

    return vgg_bn((28, 28, 1), 10, stages=[[8], [16]])


@pytest.fixture(scope="module")
def calibration() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)


def test_int8_model_has_no_float_tensor_and_takes_uint8(tiny_model, calibration) -> None:
    from ai_edge_litert.interpreter import Interpreter

    content = to_int8_tflite(tiny_model, calibration, samples=32)
    assert float_tensors(content) == []
    interp = Interpreter(model_content=content)
    assert interp.get_input_details()[0]["dtype"] == np.uint8
    assert interp.get_output_details()[0]["dtype"] == np.int8
    spec = quant_spec(content)
    assert spec.output_dtype == "int8" and spec.input_scale > 0


def test_int8_is_much_smaller_than_float(tiny_model, calibration) -> None:
    float_bytes = to_float_tflite(tiny_model)
    assert float_tensors(float_bytes)  # the float model does hold float tensors
    assert len(to_int8_tflite(tiny_model, calibration, samples=16)) < len(float_bytes)


def test_int8_logits_track_float_logits(tiny_model, calibration) -> None:
    from ai_edge_litert.interpreter import Interpreter

    content = to_int8_tflite(tiny_model, calibration, samples=64)
    interp = Interpreter(model_content=content)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.set_tensor(inp["index"], calibration[:1])
    interp.invoke()
    scale, zero = out["quantization"]
    q = (interp.get_tensor(out["index"]).astype(np.float32) - zero) * scale
    ref = np.asarray(tiny_model(calibration[:1].astype(np.float32)))
    assert np.abs(q - ref).max() < 0.1 * max(1.0, float(np.abs(ref).max())) + 3 * scale
