import msgpack
import numpy as np
import pytest

from common.errors import DecodeError
from common.schemas import MAX_FRAME_BYTES, Frame, Result


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
