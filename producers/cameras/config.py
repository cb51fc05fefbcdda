"""What a camera is: id, URL or USB device, target fps, region of interest, transport, live limits.

One camera comes from ``vigil produce camera`` flags; many from a cameras file (YAML or TOML)::

    cameras:                      # TOML: [[cameras]] tables
      - id: gate
        url: rtsp://user:pass@10.0.0.5/stream1
        fps: 5
        roi: [100, 50, 640, 480]  # x, y, w, h in camera pixels (optional)
        transport: jpeg           # raw (default) | jpeg
      - id: desk
        url: 0                    # /dev/video0
        fps: 2

A camera's ``url`` is one of ``URL_FORMS``; anything else is refused when the config is read, not retried.

Per-camera keys left out take the command's flags (which default to the settings).
"""

from __future__ import annotations

import re
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import cv2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.errors import ConfigError
from common.streams import SOURCE_RE
from producers.roi import parse_roi

Transport = Literal["raw", "jpeg"]
URL_SCHEMES = ("rtsp", "rtsps", "http", "https")
URL_FORMS = ("rtsp://HOST/PATH or rtsps://, http(s)://HOST/PATH (MJPEG; HLS or MP4 are read by FFmpeg), "
             "a USB device number (0) or /dev/videoN, or the path of an existing video file (replayed, for tests)")
_DEVICE_RE = re.compile(r"(?:/dev/video)?(\d+)")


class CameraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=SOURCE_RE.pattern, description="Source name: its stream is ns:{id}:frames.")
    url: str = Field(min_length=1, description="rtsp(s)://, http(s):// MJPEG, a USB device number or /dev/videoN, "
                                               "or a video file.")
    fps: float = Field(gt=0, le=240, description="Frames per second sent to the workers.")
    roi: tuple[int, int, int, int] | None = Field(default=None, description="Crop x, y, w, h before resizing.")
    transport: Transport = "raw"
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    max_age_ms: int = Field(default=500, ge=1, description="Workers skip frames older than this.")
    maxlen: int = Field(default=8, ge=1, description="Undelivered frames kept on the stream; older are dropped.")
    results_maxlen: int = Field(default=100_000, ge=1, description="Approximate cap of the results stream.")

    @field_validator("url", mode="before")
    @classmethod
    def _device_number(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @field_validator("url")
    @classmethod
    def _readable_url(cls, value: str) -> str:
        check_camera_url(value)
        return value

    @field_validator("roi", mode="before")
    @classmethod
    def _roi(cls, value: Any) -> Any:
        return parse_roi(value) if isinstance(value, str) else value

    @field_validator("roi")
    @classmethod
    def _roi_positive(cls, value: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if value is not None and (value[0] < 0 or value[1] < 0 or value[2] <= 0 or value[3] <= 0):
            raise ValueError("must be x, y, w, h with x, y >= 0 and w, h > 0")
        return value

    @property
    def device(self) -> int | None:
        """The USB device number N when ``url`` is ``N`` or ``/dev/videoN``."""
        return device_number(self.url)

    @property
    def safe_url(self) -> str:
        """For logs and the meta hash: the password masked, a device number as its /dev path."""
        return f"/dev/video{self.device}" if self.device is not None else redact_password(self.url)


def device_number(url: str) -> int | None:
    """N when ``url`` names a USB device: ``N`` or ``/dev/videoN``; else None."""
    match = _DEVICE_RE.fullmatch(url)
    return int(match.group(1)) if match else None


def check_camera_url(url: str) -> None:
    """``ValueError`` naming the accepted forms unless ``url`` is one Vigil can read (see ``URL_FORMS``).
    A scheme FFmpeg might also take (ftp, udp, ...) is refused: nothing else is tested or documented."""
    if _DEVICE_RE.fullmatch(url):
        return
    if "://" in url:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in URL_SCHEMES:
            raise ValueError(f"{redact_password(url)!r}: Vigil cannot read {parts.scheme or 'this'}:// cameras; "
                             f"use {URL_FORMS}")
        if not parts.hostname:
            raise ValueError(f"{redact_password(url)!r} names no host; use {URL_FORMS}")
        try:
            parts.port  # noqa: B018  (raises on a port that is not a number 0-65535)
        except ValueError as exc:
            raise ValueError(f"{redact_password(url)!r}: {exc}; use {URL_FORMS}") from None
        return
    if not Path(url).is_file():
        raise ValueError(f"{url!r} is neither a camera URL, a device nor an existing file; use {URL_FORMS}")
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)  # a file cannot come back by retrying: it opens now or never
    try:
        if not cap.isOpened():
            raise ValueError(f"{url!r} is a file OpenCV/FFmpeg cannot open as a video; use {URL_FORMS}")
    finally:
        cap.release()


def redact_password(url: str) -> str:
    """``rtsp://user:pass@host/x`` -> ``rtsp://user:***@host/x`` (for logs and the meta hash)."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*):[^@/]*@", r"\1:***@", url)


def load_cameras_file(path: Path, defaults: dict[str, Any]) -> list[CameraConfig]:
    """Parse a YAML or TOML cameras file; ``defaults`` fill the keys a camera leaves out."""
    if not path.is_file():
        raise ConfigError(f"cameras file {path} does not exist.")
    entries = _read_entries(path)
    cameras: list[CameraConfig] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        label = f"camera #{index + 1}" + (f" ({entry['id']!r})" if isinstance(entry, dict) and "id" in entry else "")
        if not isinstance(entry, dict):
            raise ConfigError(f"cameras file {path}: {label} must be a table of id, url, fps, ...")
        camera = build_camera({**defaults, **entry}, f"cameras file {path}: {label}")
        if camera.id in seen:
            raise ConfigError(f"cameras file {path}: {label}: id {camera.id!r} is used twice; ids must be unique.")
        seen.add(camera.id)
        cameras.append(camera)
    return cameras


def build_camera(values: dict[str, Any], label: str) -> CameraConfig:
    """A validated camera, or a ``ConfigError`` that starts with ``label`` and names each bad field."""
    try:
        return CameraConfig(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(f"{label}: {_explain(exc)}") from exc


def _read_entries(path: Path) -> list[Any]:
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"cameras file {path}: unsupported type {path.suffix!r}; use .yaml, .yml or .toml.")
    text = path.read_text()
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cameras file {path} does not parse: {exc}") from exc
    cameras = data.get("cameras") if isinstance(data, dict) else None
    if not isinstance(cameras, list) or not cameras:
        raise ConfigError(f"cameras file {path} needs a non-empty list `cameras` (YAML `cameras:` items, "
                          "TOML `[[cameras]]` tables), each with id, url and fps.")
    return cameras


def _explain(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "camera"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            message = "is required"
        elif err["type"] == "extra_forbidden":
            message = "is not a camera key (known: " + ", ".join(CameraConfig.model_fields) + ")"
        problems.append(f"{field} {message}")
    return "; ".join(problems) + ". Fix it and run again."
