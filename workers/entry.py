"""A stream entry as workers see it: one frame, or a pack of frames (``common.schemas.decode_entry``)."""

from __future__ import annotations

from dataclasses import dataclass

from common.settings import DEFAULT_PACK_FRAMES

PACK_GUESS = float(DEFAULT_PACK_FRAMES)  # frames per entry assumed for a file source not read yet


@dataclass(frozen=True)
class Entry:
    """One stream entry: one frame, or a pack of ``frames`` frames (``common.schemas.decode_entry``)."""

    source: str
    entry_id: str
    fields: dict[bytes, bytes] | None
    deliveries: int = 1
    frames: int = 1


def frames_in(entries: list[Entry]) -> int:
    return sum(e.frames for e in entries)
