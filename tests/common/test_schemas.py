import json

import msgpack
import numpy as np
import pytest

from common.errors import DecodeError
from common.schemas import (
    MAX_FRAME_BYTES,
    Frame,
    Result,
    ResultJSON,
    decode_entry,
    encode_entry,
    entry_frames,
    pack_pixels,
    result_fields,
)


def test_raw_frame_roundtrip_keeps_pixels() -> None:
    px = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
    frame = Frame.decode(Frame.from_pixels("cam1", 7, px, 0.28, 1.0).encode())
    assert frame.frame_id == "cam1:7"
    assert np.array_equal(frame.pixels(), px)


def test_jpeg_frame_roundtrip_is_close() -> None:
    px = np.full((32, 32, 3), 120, dtype=np.uint8)
    frame = Frame.decode(Frame.from_pixels("cam1", 0, px, 0.0, 1.0, encoding="jpeg").encode())
    assert frame.encoding == "jpeg"
    assert np.abs(frame.pixels().astype(int) - 120).max() <= 3


def test_end_of_stream_marker_roundtrip() -> None:
    assert Frame.decode(Frame.end_of_stream("cam1", 10, 1.0).encode()).eos


@pytest.mark.parametrize("raw", [b"", b"\xc1garbage", msgpack.packb({"v": 99}), msgpack.packb([1, 2])])
def test_garbage_raises_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        Frame.decode(raw)


def test_pixels_that_do_not_fit_the_header_raise() -> None:
    frame = Frame("cam1", 0, 0.0, 0.0, (28, 28, 1), data=b"\x00" * 10)
    with pytest.raises(DecodeError, match="do not fit"):
        Frame.decode(frame.encode()).pixels()


def test_oversized_frame_is_refused() -> None:
    with pytest.raises(DecodeError, match="exceeds"):
        Frame("cam1", 0, 0.0, 0.0, (1, 1, 1), data=b"\x00" * (MAX_FRAME_BYTES + 1)).encode()


def test_result_is_flat_strings_and_roundtrips() -> None:
    res = Result("cam1", "cam1:3", 3, "Bag", 0.9, 0.12, 1.0, 2.0, "1.0.0+abc", "host:1", [("Bag", 0.9), ("Coat", 0.05)])
    fields = res.encode()
    assert all(isinstance(v, str) for v in fields.values())
    assert fields["topk"] == "Bag:0.9000,Coat:0.0500"
    assert Result.decode({k.encode(): v.encode() for k, v in fields.items()}) == Result(
        "cam1", "cam1:3", 3, "Bag", 0.9, 0.12, 1.0, 2.0, "1.0.0+abc", "host:1", [("Bag", 0.9), ("Coat", 0.05)])


def _frames(n: int, source: str = "cam1") -> list[Frame]:
    return [Frame.from_pixels(source, seq, np.full((4, 4, 1), seq, np.uint8), seq / 25, 1.0) for seq in range(n)]


def test_pack_roundtrip_keeps_every_frame_in_order() -> None:
    frames = _frames(5)
    fields = encode_entry(frames)
    assert set(fields) == {b"p", b"n"} and fields[b"n"] == b"5" and entry_frames(fields) == 5
    decoded = decode_entry(fields)
    assert decoded == frames
    assert [int(f.pixels()[0, 0, 0]) for f in decoded] == [0, 1, 2, 3, 4]


def test_one_frame_is_a_plain_frame_entry() -> None:
    fields = encode_entry(_frames(1))
    assert set(fields) == {b"f"} and entry_frames(fields) == 1
    assert decode_entry(fields)[0].seq == 0


@pytest.mark.parametrize("frames", [
    [*_frames(2), Frame.end_of_stream("cam1", 2, 1.0)],  # the marker travels alone
    _frames(2) + _frames(1, "cam2"),  # one source per pack
], ids=["eos", "two-sources"])
def test_frames_that_cannot_share_a_pack_are_refused(frames: list[Frame]) -> None:
    with pytest.raises(DecodeError, match="cannot share a pack"):
        encode_entry(frames)


@pytest.mark.parametrize("fields", [
    {b"p": b"\xc1garbage", b"n": b"3"},
    {b"p": msgpack.packb({"v": 99, "frames": []}), b"n": b"3"},
    {b"p": msgpack.packb({"v": 1, "source": "c", "shape": [4, 4, 1], "dtype": "uint8", "encoding": "raw",
                         "frames": [[0, 0.0, 0.0, 7]]}), b"n": b"1"},  # pixel data that is not bytes
    {b"p": msgpack.packb({"v": 1, "source": "c", "shape": [4, 4, 9], "dtype": "uint8", "encoding": "raw",
                         "frames": [[0, 0.0, 0.0, b""]]}), b"n": b"1"},  # bad shape
    {b"x": b"no frame field"},
], ids=["not-msgpack", "version", "data-type", "shape", "no-field"])
def test_bad_packs_raise_decode_error(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(DecodeError):
        decode_entry(fields)
    assert entry_frames(fields) in (1, 3)


@pytest.mark.parametrize(("source", "labels"), [
    ("cam-1", ["T-shirt/top", "Trouser", "Bag"]),
    ('quote"and\\backslash', ['a"b', "ünïcode ✓", "tab\tname"]),
])
def test_result_json_is_exactly_the_flat_result_fields(source: str, labels: list[str]) -> None:
    """The worker's fast encoder and result_fields (what Result.encode and the docs describe) must not drift."""
    enc = ResultJSON(source, "1.0.0+abc", "host:42", labels)
    top, top_p = [1, 0, 2], [0.7071067, 0.2, 0.0928933]
    got = json.loads(enc.fields(12, top, top_p, 0.48, 1764600000.123456, 1764600000.5))
    want = result_fields(source, f"{source}:12", 12, labels[1], top_p[0], 0.48, 1764600000.123456, 1764600000.5,
                         "1.0.0+abc", "host:42", [(labels[i], p) for i, p in zip(top, top_p, strict=True)])
    assert got == [x for kv in want.items() for x in kv]
    assert Result.decode(dict(zip(got[::2], got[1::2], strict=True))).topk[0] == (labels[1], 0.7071)


def test_pack_pixels_is_one_array_or_none_when_a_frame_does_not_fit() -> None:
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (4, 3, 1), dtype=np.uint8) for _ in range(5)]
    frames = [Frame.from_pixels("s", i, img, i / 10, 1.0) for i, img in enumerate(imgs)]
    stacked = pack_pixels(frames)
    assert stacked is not None and stacked.shape == (5, 4, 3, 1) and np.array_equal(stacked, np.stack(imgs))
    short = [*frames[:2], Frame("s", 2, 0.2, 1.0, (4, 3, 1), "uint8", "raw", b"\x00" * 11), *frames[3:]]
    assert pack_pixels(short) is None
    jpeg = [Frame.from_pixels("s", 0, imgs[0], 0.0, 1.0, "jpeg")]
    assert pack_pixels(jpeg) is None
    text = Frame("s", 0, 0.0, 1.0, (4, 3, 1), "uint8", "raw", "x" * 12)  # type: ignore[arg-type]  # a foreign producer
    assert pack_pixels([text]) is None


def test_from_pixels_refuses_an_array_that_is_not_an_image() -> None:
    with pytest.raises(DecodeError, match=r"expected \(H, W\) or \(H, W, C\)"):
        Frame.from_pixels("s", 0, np.zeros((2, 4, 3, 1), np.uint8), 0.0, 1.0)


@pytest.mark.parametrize(("change", "named"), [
    ({"seq": "16"}, "seq"), ({"seq": True}, "seq"), ({"captured_at": "0.0"}, "captured_at"),
    ({"produced_at": None}, "produced_at"), ({"captured_at": float("nan")}, "captured_at"), ({"source": 7}, "source"),
    ({"eos": "yes"}, "eos"), ({"data": "text"}, "bytes"),
])
def test_a_frame_with_a_field_of_the_wrong_type_is_a_decode_error_naming_it(change: dict, named: str) -> None:
    good = Frame.from_pixels("cam", 3, np.zeros((4, 4, 1), np.uint8), 1.5, 2.5)
    payload = {"v": 1, "source": good.source, "seq": good.seq, "captured_at": good.captured_at,
               "produced_at": good.produced_at, "shape": good.shape, "dtype": good.dtype, "encoding": good.encoding,
               "data": good.data, "eos": good.eos, **change}
    with pytest.raises(DecodeError, match=named):
        Frame.decode(msgpack.packb(payload, use_bin_type=True))


def test_an_empty_jpeg_payload_is_a_decode_error() -> None:
    frame = Frame("cam", 0, 0.0, 0.0, (4, 4, 1), "uint8", "jpeg", b"")
    with pytest.raises(DecodeError, match="JPEG"):
        frame.pixels()
