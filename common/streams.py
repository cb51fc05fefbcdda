"""Stream, group and key names. Every per-source key carries the hash tag ``{source}`` so that a source's
frames, results, dead letters and checkpoint share one cluster slot (the result script touches three of them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import ConfigError

GROUP = "workers"
SOURCE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")






def check_source(name: str) -> str:
    if not SOURCE_RE.match(name):
        raise ConfigError(f"source name {name!r} is invalid: use 1-128 of letters, digits, '_', '.', '-'.")
    return name


def registry_key(namespace: str) -> str:
    """Set of every source name ever produced under this namespace."""
    return f"{namespace}:sources"


def events_key(namespace: str) -> str:
    """Stream of camera state changes (fields: source, state, previous, reason, at), capped ~10,000."""
    return f"{namespace}:events"


@dataclass(frozen=True)
class SourceKeys:
    namespace: str
    source: str

    @property
    def _prefix(self) -> str:
        return f"{self.namespace}:{{{self.source}}}"

    @property
    def frames(self) -> str:
        return f"{self._prefix}:frames"

    @property
    def results(self) -> str:
        return f"{self._prefix}:results"

    @property
    def dead(self) -> str:
        """Dead letters: undecodable frames and frames past max deliveries, with a reason."""
        return f"{self._prefix}:dead"

    @property
    def meta(self) -> str:
        """Producer checkpoint and metadata: path, total, eos, produced."""
        return f"{self._prefix}:meta"

    @property
    def undelivered(self) -> str:
        """Live sources: ids of frames not yet delivered to the group, oldest first (the live cap's queue)."""
        return f"{self.frames}:undelivered"

    def all(self) -> list[str]:
        return [self.frames, self.results, self.dead, self.meta, self.undelivered]

