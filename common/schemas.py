"""The wire format, owned here and nowhere else.

A stream entry carries either one frame or a *pack* of frames of one source:

* one frame: field ``f``, a msgpack map with a schema version, size limits checked on both ends, and raw or
  JPEG pixels (live cameras, end-of-stream markers);
* a pack: field ``p``, one msgpack map with the header the frames share (source, shape, dtype, encoding) and
  per frame ``[seq, captured_at, produced_at, data]``, plus field ``n``, the frame count as plain text (read
  without decoding the pack, and still known when the pack does not decode). File producers send packs so
  that the per-entry costs — XADD, delivery, XACK — are paid once per pack instead of once per frame.

A result is a flat map of strings, one per frame, so that ``redis-cli XRANGE`` and non-Python subscribers
can read it (documented in docs/results-schema.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack
import numpy as np

from common.errors import DecodeError

FRAME_VERSION = 1
RESULT_VERSION = "1"
PACK_VERSION = 1
FRAME_FIELD = b"f"
PACK_FIELD = b"p"
COUNT_FIELD = b"n"
MAX_PACK_FRAMES = 1024
MAX_FRAME_BYTES = 8 * 1024 * 1024
MAX_SIDE = 8192
MAX_SOURCE_LEN = 128

Encoding = Literal["raw", "jpeg"]


@dataclass(frozen=True)
class Frame:
    source: str
    seq: int
    captured_at: float  # media time in seconds for files, wall clock for live sources
    produced_at: float
    shape: tuple[int, int, int] = (0, 0, 0)
    dtype: str = "uint8"
    encoding: Encoding = "raw"
    data: bytes = b""
    eos: bool = False

    @property
    def frame_id(self) -> str:
        return f"{self.source}:{self.seq}"

    @classmethod
    def from_pixels(cls, source: str, seq: int, pixels: np.ndarray, captured_at: float, produced_at: float,
                    encoding: Encoding = "raw", jpeg_quality: int = 95) -> Frame:
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if pixels.ndim != 3:
            raise DecodeError(f"frame {source}:{seq}: pixels of shape {pixels.shape}; expected (H, W) or (H, W, C)")
        shape: tuple[int, int, int] = pixels.shape  # numpy's shape: Python ints already
        if encoding == "jpeg":
            import cv2

            ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            if not ok:
                raise DecodeError(f"frame {source}:{seq}: JPEG encoding failed")
            data = buf.tobytes()
        else:
            data = pixels.tobytes()  # C order, contiguous or not
        return cls(source, seq, captured_at, produced_at, shape, _dtype_name(pixels.dtype), encoding, data)

    @classmethod
    def end_of_stream(cls, source: str, seq: int, produced_at: float) -> Frame:
        return cls(source, seq, 0.0, produced_at, eos=True)

    def encode(self) -> bytes:
        if len(self.data) > MAX_FRAME_BYTES:
            raise DecodeError(f"frame {self.frame_id}: {len(self.data)} bytes exceeds {MAX_FRAME_BYTES}")
        payload = {
            "v": FRAME_VERSION, "source": self.source, "seq": self.seq, "captured_at": self.captured_at,
            "produced_at": self.produced_at, "shape": self.shape, "dtype": self.dtype, "encoding": self.encoding,
            "data": self.data, "eos": self.eos,
        }
        out: bytes = msgpack.packb(payload, use_bin_type=True)
        return out

    @classmethod
    def decode(cls, raw: bytes | None) -> Frame:
        if not raw:
            raise DecodeError("empty entry (trimmed or written without the frame field)")
        obj = _unpack(raw, "frame")
        if not isinstance(obj, dict) or obj.pop("v", None) != FRAME_VERSION:
            raise DecodeError(f"not a version {FRAME_VERSION} frame")
        try:
            obj["shape"] = tuple(int(s) for s in obj["shape"])
            frame = cls(**obj)
        except (TypeError, KeyError, ValueError) as exc:
            raise DecodeError(f"frame fields invalid: {exc}") from exc
        _validate(frame)
        return frame

    def pixels(self) -> np.ndarray:
        """The (H, W, C) array this frame carries; ``DecodeError`` if the bytes do not match the header."""
        h, w, c = self.shape
        if self.encoding == "jpeg":
            import cv2

            flag = cv2.IMREAD_GRAYSCALE if c == 1 else cv2.IMREAD_COLOR
            try:
                img = cv2.imdecode(np.frombuffer(self.data, np.uint8), flag) if self.data else None
            except cv2.error:
                img = None
            if img is None:
                raise DecodeError(f"frame {self.frame_id}: JPEG payload does not decode")
            img = img.reshape(img.shape[0], img.shape[1], -1)
        else:
            try:
                img = np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(h, w, c)
            except (ValueError, TypeError) as exc:
                raise DecodeError(f"frame {self.frame_id}: {len(self.data)} bytes do not fit {self.shape}") from exc
        if img.shape != (h, w, c):
            raise DecodeError(f"frame {self.frame_id}: decoded shape {img.shape} != header {self.shape}")
        return img


_DTYPE_NAMES = {np.dtype(name): name for name in ("uint8", "int8", "float32")}


def _dtype_name(dtype: np.dtype) -> str:
    """``str(dtype)``, without numpy formatting the name again for every frame (it is slow)."""
    return _DTYPE_NAMES.get(dtype) or str(dtype)


def pack_pixels(frames: list[Frame]) -> np.ndarray | None:
    """The pixels of frames that share one header (a pack's frames) as one (N, H, W, C) array, made with one
    copy instead of one array per frame; None when they are JPEG or any frame's data is not bytes or does not
    fit its shape (``Frame.pixels`` then finds which one, and why)."""
    first = frames[0]
    if first.encoding != "raw" or first.eos:
        return None
    h, w, c = first.shape
    size = h * w * c * np.dtype(first.dtype).itemsize
    if any(f.eos or not isinstance(f.data, bytes) or len(f.data) != size or f.shape != first.shape
           or f.dtype != first.dtype for f in frames):
        return None
    return np.frombuffer(b"".join([f.data for f in frames]), dtype=first.dtype).reshape(len(frames), h, w, c)


def encode_entry(frames: list[Frame]) -> dict[bytes, bytes]:
    """The fields of one stream entry carrying ``frames``: field ``f`` for one frame, a pack otherwise."""
    if len(frames) == 1:
        return {FRAME_FIELD: frames[0].encode()}
    first = frames[0]
    if not 1 < len(frames) <= MAX_PACK_FRAMES:
        raise DecodeError(f"a pack holds 1..{MAX_PACK_FRAMES} frames, not {len(frames)}")
    header = (first.source, first.shape, first.dtype, first.encoding)
    for frame in frames:
        if frame.eos or (frame.source, frame.shape, frame.dtype, frame.encoding) != header:
            raise DecodeError(f"frame {frame.frame_id} cannot share a pack with {first.frame_id} "
                              "(end-of-stream, or a different source, shape, dtype or encoding)")
    payload = {"v": PACK_VERSION, "source": first.source, "shape": first.shape, "dtype": first.dtype,
               "encoding": first.encoding,
               "frames": [(f.seq, f.captured_at, f.produced_at, f.data) for f in frames]}
    raw: bytes = msgpack.packb(payload, use_bin_type=True)
    if len(raw) > MAX_FRAME_BYTES:
        raise DecodeError(f"pack of {len(frames)} frames is {len(raw)} bytes; the limit is {MAX_FRAME_BYTES}")
    return {PACK_FIELD: raw, COUNT_FIELD: str(len(frames)).encode()}


def entry_frames(fields: dict[bytes, bytes] | None) -> int:
    """How many frames an entry says it carries (``n`` of a pack, else 1); cheap, nothing is decoded."""
    count = (fields or {}).get(COUNT_FIELD)
    if count is None:
        return 1
    try:
        return min(MAX_PACK_FRAMES, max(1, int(count)))
    except ValueError:
        return 1


def decode_entry(fields: dict[bytes, bytes] | None) -> list[Frame]:
    """The frames of one stream entry, in order; ``DecodeError`` when the entry as a whole is unusable."""
    if fields and PACK_FIELD in fields:
        return _decode_pack(fields[PACK_FIELD])
    return [Frame.decode((fields or {}).get(FRAME_FIELD))]


def _unpack(raw: bytes, what: str) -> Any:
    """A msgpack payload within the size limit, or ``DecodeError`` naming ``what`` (frame, pack)."""
    if len(raw) > MAX_FRAME_BYTES + 4096:
        raise DecodeError(f"{what} entry of {len(raw)} bytes exceeds the size limit")
    try:
        return msgpack.unpackb(raw, raw=False)
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise DecodeError(f"{what} is not msgpack: {exc}") from exc


def _decode_pack(raw: bytes) -> list[Frame]:
    obj = _unpack(raw, "pack")
    if not isinstance(obj, dict) or obj.get("v") != PACK_VERSION:
        raise DecodeError(f"not a version {PACK_VERSION} pack")
    try:
        source, dtype, encoding = str(obj["source"]), str(obj["dtype"]), obj["encoding"]
        shape = (int(obj["shape"][0]), int(obj["shape"][1]), int(obj["shape"][2]))
        rows = obj["frames"]
        if not isinstance(rows, list) or not 0 < len(rows) <= MAX_PACK_FRAMES:
            raise ValueError(f"a pack holds 1..{MAX_PACK_FRAMES} frames")
        frames = [Frame(source, int(seq), float(cap), float(prod), shape, dtype, encoding, data)
                  for seq, cap, prod, data in rows]
    except (TypeError, KeyError, ValueError, IndexError) as exc:
        raise DecodeError(f"pack fields invalid: {exc}") from exc
    _validate(frames[0])
    for frame in frames:
        if frame.seq < 0 or not isinstance(frame.data, bytes):
            raise DecodeError(f"frame {frame.frame_id}: negative seq or pixel data that is not bytes")
    return frames


def _validate(frame: Frame) -> None:
    """Types and limits of a decoded frame's header: a foreign or buggy producer's frame must fail here, with a
    reason for its dead letter, not later inside the worker (where it would crash the batch, again and again)."""
    if not isinstance(frame.source, str) or not 0 < len(frame.source) <= MAX_SOURCE_LEN:
        raise DecodeError(f"source must be a string of 1..{MAX_SOURCE_LEN} characters, not {frame.source!r:.60}")
    if type(frame.seq) is not int or frame.seq < 0:
        raise DecodeError(f"frame {frame.frame_id}: seq must be a non-negative integer, not {frame.seq!r:.60}")
    for name in ("captured_at", "produced_at"):
        value = getattr(frame, name)
        if type(value) not in (float, int) or not math.isfinite(value):
            raise DecodeError(f"frame {frame.frame_id}: {name} must be a finite number of seconds, not {value!r:.60}")
    if type(frame.eos) is not bool:
        raise DecodeError(f"frame {frame.frame_id}: eos must be true or false, not {frame.eos!r:.60}")
    if frame.eos:
        return
    if (len(frame.shape) != 3 or not all(type(s) is int for s in frame.shape)
            or not all(0 < s <= MAX_SIDE for s in frame.shape[:2]) or frame.shape[2] not in (1, 3)):
        raise DecodeError(f"frame {frame.frame_id}: bad shape {frame.shape}")
    if frame.encoding not in ("raw", "jpeg") or frame.dtype not in ("uint8", "int8", "float32"):
        raise DecodeError(f"frame {frame.frame_id}: unsupported encoding/dtype {frame.encoding}/{frame.dtype}")
    if not isinstance(frame.data, bytes):
        raise DecodeError(f"frame {frame.frame_id}: pixel data must be bytes, not {type(frame.data).__name__}")


@dataclass(frozen=True)
class Result:
    """One classification, or (``type == "eos"``) the marker that a source has ended."""

    source: str
    frame_id: str
    seq: int
    label: str = ""
    score: float = 0.0
    captured_at: float = 0.0
    produced_at: float = 0.0
    inferred_at: float = 0.0
    model_version: str = ""
    worker: str = ""
    topk: list[tuple[str, float]] = field(default_factory=list)
    type: Literal["result", "eos"] = "result"

    def encode(self) -> dict[str, str]:
        return result_fields(self.source, self.frame_id, self.seq, self.label, self.score, self.captured_at,
                             self.produced_at, self.inferred_at, self.model_version, self.worker, self.topk,
                             self.type)

    @classmethod
    def decode(cls, fields: dict[Any, Any]) -> Result:
        try:
            f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                 for k, v in fields.items()}
        except UnicodeDecodeError as exc:
            raise DecodeError(f"result fields are not UTF-8 text: {exc}") from exc
        if f.get("v") != RESULT_VERSION:
            raise DecodeError(f"not a version {RESULT_VERSION} result: {f.get('v')!r}")
        try:
            topk = [(n, float(p)) for n, p in (item.rsplit(":", 1) for item in f["topk"].split(",") if item)]
            return cls(
                source=f["source"], frame_id=f["frame_id"], seq=int(f["seq"]), label=f["label"],
                score=float(f["score"]), captured_at=float(f["captured_at"]), produced_at=float(f["produced_at"]),
                inferred_at=float(f["inferred_at"]), model_version=f["model_version"], worker=f["worker"],
                topk=topk, type="eos" if f["type"] == "eos" else "result",
            )
        except (KeyError, ValueError) as exc:
            raise DecodeError(f"result fields invalid: {exc}") from exc


def result_fields(source: str, frame_id: str, seq: int, label: str, score: float, captured_at: float,
                  produced_at: float, inferred_at: float, model_version: str, worker: str,
                  topk: list[tuple[str, float]], kind: str = "result") -> dict[str, str]:
    """The flat string fields of a result entry (``Result.encode``; workers call it directly, without building
    a ``Result`` per frame)."""
    return {
        "v": RESULT_VERSION, "type": kind, "source": source, "frame_id": frame_id, "seq": str(seq),
        "label": label, "score": f"{score:.6f}", "captured_at": f"{captured_at:.6f}",
        "produced_at": f"{produced_at:.6f}", "inferred_at": f"{inferred_at:.6f}", "model_version": model_version,
        "worker": worker, "topk": ",".join([f"{name}:{p:.4f}" for name, p in topk]),
    }


class ResultJSON:
    """Result entries of one source, model version and worker as the JSON array of their flat fields
    (``[k1, v1, k2, v2, ...]`` of ``result_fields``, same keys, order and values), made with one string format per
    frame: the worker's hot path, whose publish script decodes the array and XADDs its strings. Names are
    JSON-escaped once here, not once per frame."""

    def __init__(self, source: str, model_version: str, worker: str, labels: list[str]) -> None:
        def q(text: str) -> str:
            return json.dumps(text, ensure_ascii=False)

        self._head = f'["v",{q(RESULT_VERSION)},"type","result","source",{q(source)},"frame_id",{q(source)[:-1]}:'
        self._tail = f',"model_version",{q(model_version)},"worker",{q(worker)},"topk",'
        self._labels = [q(label) for label in labels]
        self._in_topk = [q(label)[1:-1] for label in labels]  # escaped, without the quotes

    def fields(self, seq: int, top: list[int], top_p: list[float], captured_at: float, produced_at: float,
               inferred_at: float) -> str:
        """The JSON array of one result's fields; ``top``/``top_p``: class indices and probabilities, best first."""
        topk = ",".join([f"{self._in_topk[i]}:{p:.4f}" for i, p in zip(top, top_p, strict=True)])
        return (f'{self._head}{seq}","seq","{seq}","label",{self._labels[top[0]]},"score","{top_p[0]:.6f}",'
                f'"captured_at","{captured_at:.6f}","produced_at","{produced_at:.6f}",'
                f'"inferred_at","{inferred_at:.6f}"{self._tail}"{topk}"]')
