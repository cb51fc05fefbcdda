import io
import json
import logging
import sys

import pytest

from common.log import setup_logging


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_records_go_to_the_stderr_of_the_moment_they_are_logged(monkeypatch, restore_root_logger) -> None:
    """A stream swapped in after set-up (a test's capture, then closed) must not keep receiving the records."""
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging("INFO")
    logging.getLogger("vigil.test").info("into the first")
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("vigil.test").warning("into the second")
    assert "into the second" in second.getvalue() and "WARNING" in second.getvalue()


def test_json_lines_are_one_object_per_record(monkeypatch, restore_root_logger) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    setup_logging("DEBUG", json_lines=True)
    logging.getLogger("vigil.test").debug("frame %d", 7)
    record = json.loads(out.getvalue().splitlines()[-1])
    assert record["level"] == "DEBUG" and record["logger"] == "vigil.test" and record["msg"] == "frame 7"
