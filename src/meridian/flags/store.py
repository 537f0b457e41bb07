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

import logging
from collections.abc import Iterator
from typing import Any

from meridian.backbone.connection import BackboneConnection
from meridian.core.errors import ConflictError, InvalidArgumentError, NotFoundError
from meridian.core.keyspace import Keyspace
from meridian.flags.model import MAX_DEFINITION_BYTES, StoredFlag
from meridian.state import FollowedKeyspace

log = logging.getLogger(__name__)

KEYSPACE = Keyspace("_flags", value_max_bytes=MAX_DEFINITION_BYTES + 4096, history=64)
#: The most flags held (a bulk evaluation evaluates them all).
MAX_FLAGS = 10_000


class Unreadable:
    """A stored flag this agent can't evaluate, and why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class FlagsComponent(FollowedKeyspace):
    """Follows ``_flags`` into :attr:`view`; see the module docstring."""

    name = "flags"

    KEYSPACE = KEYSPACE

    def __init__(self, conn: BackboneConnection, **followed: Any) -> None:
        """``followed``: :class:`~meridian.state.FollowedKeyspace`'s arguments."""
        super().__init__(conn, **followed)
        self._decoded: dict[str, tuple[int, StoredFlag | Unreadable]] = {}

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
        await self.wait_applied(revision)
        return revision

    async def delete(self, key: str, if_revision: int | None) -> int:
        if self.view.get(key) is None and if_revision is None:
            raise NotFoundError(f"flag {key!r} is not defined")
        revision, _ = await self.store.delete(key, if_revision)
        await self.wait_applied(revision)
        return revision
