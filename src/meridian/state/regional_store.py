"""A ``regional`` keyspace on JetStream: one bucket per partition, in its home region.

The model and the names are in :mod:`meridian.state.model.regional`. Here:

- :class:`PartitionStore` is a partition's bucket. It is a
  :class:`~meridian.state.global_store.GlobalKeyspaceStore` placed in the home
  region's cluster, so writes, compare-and-set, strong reads and freshness
  barriers are the ``global`` ones, answered by the home region's quorum: no
  WAN round trip from the home region. Elsewhere its view follows this
  region's read-only mirror; a mirror keeps the origin's sequence numbers, so
  the barriers' sequences prove the mirror's freshness exactly as they prove
  the bucket's.
- :func:`create_partition` makes a new partition's bucket and its mirrors,
  only in regions the keyspace's residency allows.
- :func:`rehome` moves a partition's bucket to another home with JetStream's
  stream move.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence

import nats.errors
import nats.js.errors
from nats.js import api

from meridian.backbone.connection import (
    BackboneConnection,
    add_stream_if_missing,
    translate_nats_errors,
)
from meridian.core.errors import (
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from meridian.core.hlc import HlcTimestamp
from meridian.core.keyspace import Keyspace
from meridian.core.residency import refuse
from meridian.state.global_store import GlobalKeyspaceStore, bucket_config
from meridian.state.model import regional

log = logging.getLogger(__name__)

#: A partition's view is proven fresh (a barrier every freshness interval)
#: only while BOUNDED reads ask for it within this long.
PROOF_IDLE_S = 30.0
#: How long a re-home waits for JetStream to finish moving a partition.
MOVE_TIMEOUT_S = 120.0
NAMES_PAGE = 1024


def _metadata(keyspace: Keyspace, partition: str) -> dict[str, str]:
    return {
        regional.META_KEYSPACE: keyspace.name,
        regional.META_PARTITION: partition,
        regional.META_RESIDENCY: ",".join(keyspace.residency or ()),
    }


def mirror_config(
    keyspace: Keyspace, partition: str, region: str, replicas: int
) -> api.StreamConfig:
    """A read-only copy of a partition's bucket in ``region``'s cluster."""
    return api.StreamConfig(
        name=regional.mirror(keyspace.name, partition, region),
        description=f"Meridian regional keyspace {keyspace.name}, partition {partition}: "
        f"read-only copy in {region}",
        mirror=api.StreamSource(name=regional.stream(keyspace.name, partition)),
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        placement=api.Placement(cluster=region),
        max_msgs_per_subject=keyspace.history,
        metadata=_metadata(keyspace, partition),
    )


async def _add(conn: BackboneConnection, config: api.StreamConfig, timeout_s: float) -> bool:
    """Create a stream unless one of that name exists; whether this call made it."""
    with translate_nats_errors(f"cannot create stream {config.name}"):
        async with asyncio.timeout(timeout_s + 0.5):
            return await add_stream_if_missing(conn.jetstream(timeout_s), config)
    raise AssertionError("unreachable")  # translate_nats_errors re-raises


async def stream_cluster(conn: BackboneConnection, name: str, timeout_s: float) -> str | None:
    """The cluster a stream is placed in; None if there is no such stream."""
    js = conn.jetstream(timeout_s)
    try:
        with translate_nats_errors(f"cannot read stream {name}"):
            async with asyncio.timeout(timeout_s + 0.5):
                info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        return None
    placement = info.config.placement
    if info.cluster and info.cluster.name:
        return info.cluster.name
    return placement.cluster if placement else None


async def stream_names(conn: BackboneConnection, timeout_s: float) -> list[str]:
    """Every stream's name in the account (JetStream's STREAM.NAMES, paged).

    nats-py has no call for it; the request and its paging are JetStream's
    documented API (``$JS.API.STREAM.NAMES``, ``offset``, ``total``, ``limit``).
    """
    names: list[str] = []
    with translate_nats_errors("cannot list the streams"):
        while True:
            async with asyncio.timeout(timeout_s + 0.5):
                reply = await conn.nc.request(
                    "$JS.API.STREAM.NAMES",
                    json.dumps({"offset": len(names)}).encode(),
                    timeout=timeout_s,
                )
            body = json.loads(reply.data)
            if "error" in body:
                raise UnavailableError(f"cannot list the streams: {body['error']}")
            page = body.get("streams") or []
            names += page
            if not page or len(names) >= int(body.get("total", 0)):
                return names


async def create_partition(
    conn: BackboneConnection,
    keyspace: Keyspace,
    partition: str,
    *,
    home: str,
    regions: Sequence[str],
    replicas: int,
    timeout_s: float,
) -> str:
    """Make a partition's bucket in ``home`` and a mirror in every other allowed
    region; its home (another writer may have made it first, elsewhere)."""
    config = bucket_config(
        keyspace,
        regional.bucket(keyspace.name, partition),
        f"Meridian regional keyspace {keyspace.name}, partition {partition}",
        cluster=home,
        replicas=replicas,
        metadata=_metadata(keyspace, partition),
    )
    if not await _add(conn, config, timeout_s):
        home = await stream_cluster(conn, config.name or "", timeout_s) or home
    for region in regional.mirror_regions(home, tuple(regions), keyspace.residency):
        try:
            await _add(conn, mirror_config(keyspace, partition, region, replicas), timeout_s)
        except UnavailableError as exc:
            # That region's agent makes its own mirror when it finds the partition.
            log.warning("mirror of %s/%s in %s not made: %s", keyspace.name, partition, region, exc)
    return home


class PartitionStore(GlobalKeyspaceStore):
    """One partition's bucket, read and written as a ``global`` bucket is, in its home."""

    def __init__(
        self,
        conn: BackboneConnection,
        keyspace: Keyspace,
        partition: str,
        *,
        region: str,
        home: str,
        replicas: int,
        timeout_s: float,
        clock_now: Callable[[], HlcTimestamp],
    ) -> None:
        super().__init__(
            conn,
            keyspace,
            region=region,
            replicas=replicas,
            timeout_s=timeout_s,
            clock_now=clock_now,
            cluster=home,
        )
        self.partition = partition
        self.bucket = regional.bucket(keyspace.name, partition)
        self.stream = regional.stream(keyspace.name, partition)
        self.feed_stream = self.stream
        self._prefix = f"$KV.{self.bucket}."
        self._bounded_read_at = -PROOF_IDLE_S

    @property
    def home(self) -> str:
        return self.cluster

    def bounded_read(self) -> None:
        """A BOUNDED read asked for this partition's freshness: keep proving it."""
        self._bounded_read_at = time.monotonic()

    async def prove_freshness(self) -> None:
        """A barrier, but only while BOUNDED reads want one. Partitions are many,
        and a proof is a write to the home every freshness interval from every
        agent that follows the partition. An idle partition's first BOUNDED read
        is served STRONG (its barrier proves the view too); later ones, locally."""
        if time.monotonic() - self._bounded_read_at < PROOF_IDLE_S:
            await self.barrier()

    async def ensure(self) -> None:
        """Find the partition's home and follow it there, or through this region's mirror."""
        home = await stream_cluster(self.conn, self.stream, self.timeout_s)
        if home is None:
            raise UnavailableError(
                f"partition {self.partition!r} of {self.keyspace.name} has no bucket yet"
            )
        self.cluster = home
        if home == self.region:
            self.feed_stream = self.stream
            return
        if not self.keyspace.allowed(self.region):
            # Never reached: a region outside the residency follows nothing.
            raise refuse(f"keyspace {self.keyspace.name!r}", self.region, self.keyspace.residency)
        await _add(
            self.conn,
            mirror_config(self.keyspace, self.partition, self.region, self.replicas),
            self.timeout_s,
        )
        self.feed_stream = regional.mirror(self.keyspace.name, self.partition, self.region)


async def rehome(
    conn: BackboneConnection,
    keyspace: Keyspace,
    partition: str,
    to: str,
    *,
    regions: Sequence[str],
    replicas: int,
    timeout_s: float,
    move_timeout_s: float = MOVE_TIMEOUT_S,
) -> tuple[str, int]:
    """Move a partition's home to ``to``; (the previous home, its last revision).

    JetStream moves the bucket: its Raft group gains peers in ``to``, catches
    them up, hands over leadership and drops the old peers. Writes keep being
    ordered by that group throughout, so none is lost or reordered; the few
    that arrive during the hand-over fail (not applied) and are retried by the
    caller. First the old home gets a mirror, so it keeps a local copy for
    BOUNDED and EVENTUAL reads; last the new home's mirror, now redundant, is
    removed (its agents then follow the bucket itself).
    """
    if to not in regions:
        raise InvalidArgumentError(
            FieldViolation("region", f"unknown region {to[:40]!r}; regions: {', '.join(regions)}")
        )
    if not keyspace.allowed(to):
        raise refuse(f"keyspace {keyspace.name!r}", to, keyspace.residency)
    name = regional.stream(keyspace.name, partition)
    js = conn.jetstream(timeout_s)
    with translate_nats_errors(f"cannot read {name}"):
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            raise NotFoundError(
                f"{keyspace.name} has no partition {partition!r} (nothing was written to it)"
            ) from None
    previous = info.cluster.name if info.cluster and info.cluster.name else ""
    if previous == to:
        return previous, int(info.state.last_seq)
    if previous:
        await _add(conn, mirror_config(keyspace, partition, previous, replicas), timeout_s)
    config = info.config
    config.placement = api.Placement(cluster=to)
    with translate_nats_errors(f"cannot move {name} to {to}"):
        await js.update_stream(config)
    deadline = time.monotonic() + move_timeout_s
    while True:
        await asyncio.sleep(0.2)
        try:
            now: api.StreamInfo | None = await js.stream_info(name)
        except (TimeoutError, nats.errors.Error):
            now = None  # the leader is changing hands
        if now is not None:
            info = now
        if (
            now is not None
            and info.cluster is not None
            and info.cluster.name == to
            and info.cluster.leader
            # The group is back to its size: the old home's peers have left.
            and len(info.cluster.replicas or []) <= replicas - 1
        ):
            break
        if time.monotonic() > deadline:
            raise UnavailableError(
                f"{keyspace.name}/{partition}: JetStream has not finished moving it to {to} "
                f"within {move_timeout_s:g}s; it goes on by itself (`meridian residency check`)"
            )
    with (
        translate_nats_errors(f"cannot remove the mirror in {to}"),
        contextlib.suppress(nats.js.errors.NotFoundError),
    ):
        await js.delete_stream(regional.mirror(keyspace.name, partition, to))
    log.info("re-homed %s/%s from %s to %s", keyspace.name, partition, previous, to)
    return previous, int(info.state.last_seq)
