"""Routing weights and rollouts in the ``global`` keyspace ``_rollouts``,
followed into every agent.

Keys:

- ``w/<service>/<region>``: the weights the region's agents route
  ``service`` by (``{"weights": {"v1": 95, "v2": 5}, "rollout": id}``);
  read on every call, from the view, so routing never leaves the region
  and goes on with the last weights while the global quorum is away;
- ``r/<service>``: the service's rollout, current or last
  (:class:`~meridian.rollouts.progress.Rollout` as JSON);
- ``h/<service>/<started_ms>-<id>``: each finished rollout, for history.

A service with no weights in a region is routed as before: any healthy
instance, whatever its version. Every write is one CAS write to the global
quorum; the writer then waits until its own view shows it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from meridian.backbone.connection import BackboneConnection
from meridian.core.keyspace import Keyspace
from meridian.rollouts.progress import Rollout, desired_weights
from meridian.state import FollowedKeyspace

log = logging.getLogger(__name__)

KEYSPACE = Keyspace("_rollouts", value_max_bytes=512 * 1024, history=16)
#: The most finished rollouts kept per service.
MAX_HISTORY = 50


def weights_key(service: str, region: str) -> str:
    return f"w/{service}/{region}"


def rollout_key(service: str) -> str:
    return f"r/{service}"


def history_key(rollout: Rollout) -> str:
    service = rollout.plan.get("service", "")
    return f"h/{service}/{rollout.started_ms:015d}-{rollout.id}"


def encode(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class RolloutsComponent(FollowedKeyspace):
    """Follows ``_rollouts``; see the module docstring."""

    name = "rollouts"

    KEYSPACE = KEYSPACE

    def __init__(self, conn: BackboneConnection, **followed: Any) -> None:
        """``followed``: :class:`~meridian.state.FollowedKeyspace`'s arguments."""
        super().__init__(conn, **followed)
        self._weights: dict[str, tuple[int, dict[str, int] | None]] = {}

    # -- reads (the view) ---------------------------------------------------

    def weights(self, service: str, region: str) -> dict[str, int] | None:
        """The weights ``service`` is routed by in ``region``, or None (any
        version). On the path of every call: decoded once per revision."""
        key = weights_key(service, region)
        entry = self.view.get(key)
        if entry is None:
            return None
        cached = self._weights.get(key)
        if cached is not None and cached[0] == entry.revision:
            return cached[1]
        weights: dict[str, int] | None
        try:
            raw = json.loads(entry.value)["weights"]
            weights = {str(v): int(w) for v, w in raw.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Unreadable weights (a newer writer): route as if there were none.
            log.error("weights %s at revision %d unreadable: %s", key, entry.revision, exc)
            weights = None
        if len(self._weights) > 10_000:
            self._weights.clear()
        self._weights[key] = (entry.revision, weights)
        return weights

    def weights_entry(self, service: str, region: str) -> tuple[int, dict[str, Any]] | None:
        entry = self.view.get(weights_key(service, region))
        if entry is None:
            return None
        return entry.revision, json.loads(entry.value)

    def weight_docs(self, service: str) -> dict[str, dict[str, Any]]:
        """Region -> its stored weights document, for every region that has one."""
        prefix = f"w/{service}/"
        out = {}
        for e in self.view.scan(prefix, "", 1000):
            try:
                out[e.key[len(prefix) :]] = json.loads(e.value)
            except ValueError as exc:  # a newer writer's: left out, as routing does
                log.error("weights %s at revision %d unreadable: %s", e.key, e.revision, exc)
        return out

    def rollout(self, service: str) -> tuple[int, Rollout] | None:
        entry = self.view.get(rollout_key(service))
        if entry is None:
            return None
        return entry.revision, Rollout.from_json(json.loads(entry.value))

    def rollouts(self) -> list[tuple[int, Rollout]]:
        """Every service's current or last rollout."""
        out = []
        for entry in self.view.scan("r/", "", 10_000):
            try:
                out.append((entry.revision, Rollout.from_json(json.loads(entry.value))))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("rollout %s unreadable: %s", entry.key, exc)
        return out

    def history(self, service: str, limit: int = MAX_HISTORY) -> list[Rollout]:
        """The service's finished rollouts, newest first."""
        prefix = f"h/{service}/"
        entries = list(self.view.scan(prefix, "", 10_000))
        return [Rollout.from_json(json.loads(e.value)) for e in reversed(entries)][:limit]

    # -- writes (the global quorum) -----------------------------------------

    async def write(self, key: str, doc: Mapping[str, Any], if_revision: int | None) -> int:
        """Store ``doc`` under ``key`` by CAS on ``if_revision`` (0: only if
        absent; None: whatever is there); ConflictError when another write
        won. Returns once this agent's view shows it."""
        if if_revision == 0:
            revision, _ = await self.store.create(key, encode(doc))
        else:
            revision, _ = await self.store.put(key, encode(doc), if_revision)
        await self.wait_applied(revision)
        return revision

    async def reconcile(self, r: Rollout) -> None:
        """Write each region's weights as ``r``'s status says they must be,
        each by CAS on the revision this view holds (a concurrent writer
        wins, and the next reconciliation looks again)."""
        plan = r.parsed()
        for region, weights in desired_weights(r, plan).items():
            held = self.weights_entry(plan.service, region)
            if held is not None and held[1].get("weights") == weights:
                continue
            doc = {"weights": weights, "rollout": r.id}
            await self.write(weights_key(plan.service, region), doc, held[0] if held else 0)

    async def keep_history(self, r: Rollout) -> None:
        """Store finished ``r`` in the service's history, dropping the oldest
        beyond MAX_HISTORY."""
        await self.write(history_key(r), r.to_json(), None)
        prefix = f"h/{r.plan.get('service', '')}/"
        entries = self.view.scan(prefix, "", 10_000)
        for old in entries[: max(0, len(entries) - MAX_HISTORY)]:
            await self.delete(old.key)

    async def delete(self, key: str) -> None:
        revision, _ = await self.store.delete(key)
        await self.wait_applied(revision)
