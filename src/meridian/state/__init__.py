"""State: global and replicated keyspaces (DESIGN §3).

- ``model/``: pure rules (CRDT merges, the replicated wire form, view freshness);
- ``global_store``: a global keyspace over a NATS KV bucket in the `global` cluster;
- ``replicated_store``: per-region streams merged into one view;
- ``replicas``: the agent's followed views of each keyspace (the change-feed cache);
- ``followed``: the agent's own global keyspaces (flags, rollouts) followed into a view;
- ``service``: the State API, proto in and proto out.

Other capabilities use state only through the names below.
"""

from __future__ import annotations

from meridian.core.keyspace import ConflictPolicy
from meridian.state.followed import FollowedKeyspace
from meridian.state.global_store import (
    HLC_HEADER,
    KV_OPERATION,
    REGION_HEADER,
    GlobalKeyspaceStore,
)
from meridian.state.model import replicated as _replicated
from meridian.state.model.view import KeyspaceView, StoredEntry

__all__ = [
    "HLC_HEADER",
    "KV_OPERATION",
    "REGION_HEADER",
    "FollowedKeyspace",
    "GlobalKeyspaceStore",
    "KeyspaceView",
    "StoredEntry",
    "replicated_deleted",
]


def replicated_deleted(conflict: ConflictPolicy, data: bytes) -> bool:
    """Whether a replicated keyspace message leaves its key deleted."""
    return not _replicated.exists(_replicated.decode(conflict, data))
