"""Stream, group and key names. Every per-source key carries the hash tag ``{source}`` so that a source's
frames, results, dead letters and checkpoint share one cluster slot (the result script touches three of them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import ConfigError

GROUP = "workers"
SOURCE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


# Lua for scripts that compare stream entry ids ("ms-seq"): split(id) -> ms, seq; lt(a, b); le(a, b).
LUA_ENTRY_IDS = """
local function split(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function lt(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  return am < bm or (am == bm and as < bs)
end
local function le(a, b)
  return not lt(b, a)
end
"""


# Lua for scripts that open a source: ensure_group(stream, group) creates the consumer group from the stream's first
# entry (MKSTREAM), unless it exists; any other error is raised as the script's error.
LUA_ENSURE_GROUP = """
local function ensure_group(stream, group)
  local made = redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  if type(made) == 'table' and made.err and not string.find(made.err, 'BUSYGROUP', 1, true) then error(made) end
end
"""


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


def source_of_stream(namespace: str, stream: str) -> str:
    prefix = f"{namespace}:{{"
    if not stream.startswith(prefix) or "}:" not in stream:
        raise ConfigError(f"{stream!r} is not a Vigil frames stream under namespace {namespace!r}")
    return stream[len(prefix):stream.index("}:")]
