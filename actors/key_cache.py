"""The node's cache of API key lookups, kept true by PostgreSQL notifications.

Every request authenticates, and a database round trip per request would cost as much as the
work it authorises. Live keys are cached by digest; a trigger NOTIFYs each change of a key
(revocation, rotation, scopes, deletion) at commit, and every node drops it at once. Entries
are kept only while the listener is connected: when it is not, every lookup goes to the
database, so a missed notification can never keep a revoked key alive.
"""

from __future__ import annotations

import attrs
import trio

from store import keys as keys_store
from store.keys import ApiKey
from store.notifications import listen_forever
from store.pool import Store

__all__ = ["KeyCache", "KEY_CHANNEL"]

KEY_CHANNEL = "smsgw_keys"


@attrs.define(eq=False)
class KeyCache:
    store: Store
    ttl: float = 300.0          # a backstop only: changes arrive as notifications
    max_entries: int = 50_000
    _entries: dict[str, tuple[ApiKey, float]] = attrs.Factory(dict)
    _generation: int = 0        # bumped by every invalidation, to drop lookups that raced one
    _listening: bool = False
    hits: int = 0
    misses: int = 0

    async def lookup(self, presented: str) -> ApiKey | None:
        """The live key for `presented`, or None. Unknown keys are never cached."""
        digest = keys_store.digest_of(presented)
        now = trio.current_time()
        entry = self._entries.get(digest)
        if entry is not None and entry[1] > now:
            self.hits += 1
            return entry[0]
        self.misses += 1
        generation = self._generation
        key = await self.store.run(keys_store.find_key_by_digest, digest)
        if key is not None and self._listening and generation == self._generation:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[digest] = (key, now + self.ttl)
        return key

    def invalidate(self, digest: str) -> None:
        self._generation += 1
        self._entries.pop(digest, None)

    def _connected(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._listening = True

    def _disconnected(self) -> None:
        self._listening = False
        self._generation += 1
        self._entries.clear()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen for key changes until cancelled (reconnecting as needed)."""
        task_status.started()
        await listen_forever(self.store.pool.conninfo, [KEY_CHANNEL], name="keys",
                             on_notify=lambda channel, digest: self.invalidate(digest),
                             on_connect=self._connected, on_disconnect=self._disconnected)
