"""The janitor: every worker reclaims entries a crashed, hung or cut-off consumer left pending (XAUTOCLAIM past
``claim_idle_ms``, each source's cursor continued until 0-0) and deletes consumers that are gone, so that no frame
waits for ever on a dead worker and `vigil status` lists live workers only."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import redis

from common import scripts
from common.schemas import entry_frames
from common.streams import GROUP, SourceKeys
from workers.entry import PACK_GUESS, Entry, frames_in

log = logging.getLogger(__name__)


class Janitor:
    """Reclaims for ``consumer``: the entries it claims join that consumer's next batch."""

    def __init__(self, client: redis.Redis, consumer: str, policy: Any) -> None:
        self.client = client
        self.consumer = consumer
        self.policy = policy  # workers.reader.ReadPolicy: max_batch, claim_idle_ms, forget_idle_ms
        self._claimed_at = time.monotonic()
        self._cursors: dict[str, str] = {}
        self._forget = scripts.register(client, "forget_consumers")

    def reclaim_due(self, sources: dict[str, SourceKeys], per_entry: dict[str, float]) -> list[Entry]:
        """Claim entries idle past claim_idle_ms, continuing each source's cursor until 0-0."""
        every = max(self.policy.claim_idle_ms / 2, 100) / 1000
        if time.monotonic() - self._claimed_at < every:
            return []
        self._claimed_at = time.monotonic()
        out: list[Entry] = []
        for source, keys in sources.items():
            while frames_in(out) < self.policy.max_batch:
                cursor = self._cursors.get(source, "0-0")
                wanted = -(-(self.policy.max_batch - frames_in(out)) // per_entry.get(source, PACK_GUESS))
                reply = self.client.xautoclaim(keys.frames, GROUP, self.consumer, self.policy.claim_idle_ms,
                                               start_id=cursor, count=max(1, int(wanted)))
                self._cursors[source] = reply[0].decode()
                out += self._with_deliveries(source, keys, reply[1])
                if self._cursors[source] == "0-0":
                    break
        if out:
            by_source = Counter(entry.source for entry in out)
            log.warning("janitor reclaimed %s: idle > %d ms, their worker died, hung or was cut off",
                        ", ".join(f"{n} entries of source {source}" for source, n in sorted(by_source.items())),
                        self.policy.claim_idle_ms)
        self.forget_gone_consumers(sources)
        return out

    def forget_gone_consumers(self, sources: dict[str, SourceKeys]) -> None:
        """Delete the group's consumers that own no pending entry and were idle past forget_idle_ms: workers that
        were killed (SIGKILL, OOM) could not leave themselves and `vigil status` would list them for ever. The
        check and the delete are one script, so an entry delivered meanwhile can never be dropped with its
        consumer; a live one deleted by mistake is re-created by its next XREADGROUP."""
        for keys in sources.values():
            try:
                gone = int(self._forget(keys=[keys.frames], args=[GROUP, self.policy.forget_idle_ms, self.consumer]))
            except redis.RedisError as exc:  # NOGROUP: the source was deleted meanwhile; NOPERM: an ACL user
                if "NOGROUP" not in str(exc):
                    log.warning("janitor could not list the consumers of %s: %s", keys.source, exc)
                continue
            if gone:
                log.info("janitor removed %d consumers of %s with no pending entry, idle > %d ms (gone, or idle "
                         "on Redis 7.0, which re-creates them on their next delivery)", gone, keys.source,
                         self.policy.forget_idle_ms)

    def _with_deliveries(self, source: str, keys: SourceKeys, claimed: list[Any]) -> list[Entry]:
        if not claimed:
            return []
        first, last = claimed[0][0], claimed[-1][0]
        pending = self.client.xpending_range(keys.frames, GROUP, min=first, max=last, count=len(claimed) * 4,
                                             consumername=self.consumer)
        counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        return [Entry(source, eid.decode(), fields, counts.get(eid, 1), entry_frames(fields))
                for eid, fields in claimed]
