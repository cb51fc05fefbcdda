import json
from pathlib import Path

import numpy as np
import pytest

from common.errors import DataError
from model.data import FASHION_SPEC, find_fashion_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    from model.architectures import vgg_bn
    from model.bundle import export_bundle
    from model.quantize import to_float_tflite, to_int8_tflite

    try:
        find_fashion_dir()
    except DataError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("report")
    calib = np.random.default_rng(0).integers(0, 256, (32, 28, 28, 1), dtype=np.uint8)
    model = vgg_bn((28, 28, 1), 10, stages=[[8], [16]])
    for name in ("baseline-cnn", "tiny-thin"):
        run = root / "runs" / name
        run.mkdir(parents=True)
        (run / "model.float.tflite").write_bytes(to_float_tflite(model))
        (run / "model.int8.tflite").write_bytes(to_int8_tflite(model, calib, 32))
        parent = {"parent": "x/baseline-cnn/model.keras.h5"} if "thin" in name else {}
        meta = {"params": 100, "epochs_run": 1, **parent}
        (run / "metrics.json").write_text(json.dumps(meta))
    export_bundle(root / "bundle", model, to_int8_tflite(model, calib, 32), [str(i) for i in range(10)],
                  input_spec=FASHION_SPEC, name="tiny", version="0.0.1", command="pytest", saved_model=False)
    return root


@pytest.mark.slow
def test_report_table_is_measured_from_the_runs(runs: Path) -> None:
    from model.report import write_report

    out = write_report(runs / "runs", runs / "bundle", runs / "report.md", threads=1)
    text = out.read_text()
    assert "baseline CNN (float32)" in text and "shipped bundle 0.0.1+" in text
    assert "tiny-thin (INT8)" in text and "vs parent `baseline-cnn`" in text
    assert "Machine:" in text and out.with_suffix(".confusion.png").is_file()
