"""The flags in a ``global`` keyspace, followed into the agent's cache.

Each flag is one key of the keyspace ``_flags`` (the KV bucket ``mg__flags``,
R3 across the regions like every global keyspace); its value is a
:class:`~meridian.flags.model.StoredFlag` as canonical JSON. Every agent
follows the keyspace's change feed into a view kept for the agent's life, and
evaluates from it: an evaluation never leaves the region, and while the
global quorum can't be reached (a partition, an election) the agent keeps
evaluating the flags it has.

Until the view has caught up once, evaluations fail with
``PROVIDER_NOT_READY`` (the SDKs then use the code's default). A stored flag
this version can't evaluate (one written by a newer version) is logged and
evaluates as ``GENERAL`` error, never as some other flag's value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

from meridian.backbone.connection import (
    BackboneConnection,
    ensure_until_done,
    reraise_if_cancelling,
    retry_forever,
)
from meridian.backbone.lifecycle import Background
from meridian.config import GLOBAL_CLUSTER
from meridian.core.errors import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from meridian.core.hlc import HybridLogicalClock
from meridian.core.keyspace import Keyspace
from meridian.flags.model import MAX_DEFINITION_BYTES, StoredFlag
from meridian.observability.metrics import AgentMetrics
from meridian.state import GlobalKeyspaceStore, KeyspaceView, StoredEntry

log = logging.getLogger(__name__)

KEYSPACE = Keyspace("_flags", value_max_bytes=MAX_DEFINITION_BYTES + 4096, history=64)
#: Between attempts to follow the store after a failure.
RETRY_S = 1.0
#: How often the view's freshness is proven with a barrier (flags need no
#: bounded reads; the barrier only marks an empty keyspace as caught up).
FRESHNESS_INTERVAL_S = 30.0
#: The most flags held (a bulk evaluation evaluates them all).
MAX_FLAGS = 10_000


class Unreadable:
    """A stored flag this agent can't evaluate, and why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class FlagsComponent(Background):
    """Follows ``_flags`` into :attr:`view`; see the module docstring."""

    name = "flags"

    def __init__(
        self,
        conn: BackboneConnection,
        *,
        region: str,
        replicas: int,
        timeout_s: float,
        hlc: HybridLogicalClock,
        metrics: AgentMetrics,
    ) -> None:
        super().__init__()
        self.region = region
        self.hlc = hlc
        self.metrics = metrics
        self.store = GlobalKeyspaceStore(
            conn,
            KEYSPACE,
            region=region,
            replicas=replicas,
            timeout_s=timeout_s,
            clock_now=hlc.now,
            cluster=GLOBAL_CLUSTER,
        )
        self.view: KeyspaceView[StoredEntry] = KeyspaceView()
        self._decoded: dict[str, tuple[int, StoredFlag | Unreadable]] = {}
        self._changed = asyncio.Condition()

    @property
    def loaded(self) -> bool:
        """Whether the view has caught up with the store at least once."""
        return self.view.complete_seq > 0

    @property
    def revision(self) -> int:
        """The last change applied: the version of the flag set held."""
        return self.view.applied_seq

    async def run(self) -> None:
        # Serve at once: evaluations say PROVIDER_NOT_READY until the view has
        # caught up, and the agent must not wait for the global quorum to start.
        self.serving()
        await ensure_until_done(self.store.conn, self.store.ensure, "flags keyspace")
        await retry_forever("following the flags", self._follow, retry_s=RETRY_S)

    async def _follow(self) -> None:
        # The same view across restarts: what was applied is skipped, deletes
        # made meanwhile arrive as their markers.
        await self.store.follow(self.view, FRESHNESS_INTERVAL_S, self._on_applied)
        reraise_if_cancelling()

    async def _on_applied(self, hlc_wall_ms: int) -> None:
        if hlc_wall_ms:
            lag = max(0.0, time.time() - hlc_wall_ms / 1000)
            self.metrics.cache_lag.labels(self.region, KEYSPACE.name).observe(lag)
        async with self._changed:
            self._changed.notify_all()

    async def wait_applied(self, revision: int, timeout_s: float) -> None:
        """Return once the view holds ``revision`` (this agent's own write),
        so a read here right after a change sees it; UNAVAILABLE otherwise."""
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: self.view.applied_seq >= revision)
        except TimeoutError:
            raise UnavailableError(
                f"the flag change at revision {revision} is stored but this region's "
                f"feed did not show it within {timeout_s:g}s; it will"
            ) from None

    def get(self, key: str) -> tuple[int, StoredFlag | Unreadable] | None:
        """The flag held for ``key`` and its revision; None when not defined."""
        entry = self.view.get(key)
        if entry is None:
            return None
        cached = self._decoded.get(key)
        if cached is not None and cached[0] == entry.revision:
            return cached
        try:
            decoded: StoredFlag | Unreadable = StoredFlag.decode(entry.value)
        except (ValueError, InvalidArgumentError) as exc:
            log.error(
                "flag %r at revision %d can't be evaluated here: %s", key, entry.revision, exc
            )
            decoded = Unreadable(f"the stored flag can't be read by this agent: {exc}"[:300])
        if len(self._decoded) > 2 * MAX_FLAGS:
            self._decoded.clear()
        self._decoded[key] = (entry.revision, decoded)
        return entry.revision, decoded

    def flag_keys(self) -> Iterator[str]:
        for entry in self.view.scan("", "", MAX_FLAGS):
            yield entry.key

    async def write(self, key: str, flag: StoredFlag, if_revision: int | None) -> int:
        """Store ``flag`` under ``key`` (one write to the global quorum), then
        wait until this agent's view shows it. ConflictError when
        ``if_revision`` is not the flag's revision (0: the flag exists)."""
        if if_revision == 0:
            revision, _ = await self.store.create(key, flag.encode())
        else:
            if if_revision is None and self.view.get(key) is None and len(self.view) >= MAX_FLAGS:
                raise ConflictError(f"at most {MAX_FLAGS} flags can be defined")
            revision, _ = await self.store.put(key, flag.encode(), if_revision)
        await self.wait_applied(revision, self.store.timeout_s)
        return revision

    async def delete(self, key: str, if_revision: int | None) -> int:
        if self.view.get(key) is None and if_revision is None:
            raise NotFoundError(f"flag {key!r} is not defined")
        revision, _ = await self.store.delete(key, if_revision)
        await self.wait_applied(revision, self.store.timeout_s)
        return revision
