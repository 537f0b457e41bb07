"""CONFLICT means a committed write beat the caller, and nothing else.

A leader that cannot reach its quorum refuses a compare-and-set while another
write of the key is in flight there (JetStream error 10164). That write never
commits while the quorum is gone, so no winner exists: the store must not
answer CONFLICT (the chaos harness saw exactly that when the region holding
the leader was cut off), but a retryable error saying the write was not
applied. Real 3-server cluster; the two followers are paused with SIGSTOP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator

import pytest

from meridian.backbone.connection import BackboneConnection
from meridian.core.errors import ConflictError, MeridianError, UnavailableError
from meridian.core.hlc import HybridLogicalClock, SystemClock
from meridian.core.keyspace import Keyspace
from meridian.state.global_store import GlobalKeyspaceStore
from meridian.testing.nats_server import NatsCluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster("global") as c:
        yield c


@contextlib.asynccontextmanager
async def store_on(url: str, name: str) -> AsyncIterator[GlobalKeyspaceStore]:
    conn = BackboneConnection([url], name=f"test-{name}")
    await conn.connect()
    store = GlobalKeyspaceStore(
        conn,
        Keyspace(name),
        region="us-east",
        replicas=3,
        timeout_s=1.0,
        clock_now=HybridLogicalClock(SystemClock()).now,
    )
    try:
        await store.ensure()
        yield store
    finally:
        await conn.drain()


async def test_a_cas_refused_for_a_write_that_never_commits_is_not_a_conflict(
    cluster: NatsCluster,
) -> None:
    async with store_on(cluster.server("us-east").url, "casref") as probe:
        revision, _ = await probe.put("k", b"1")
        info = await probe.conn.jetstream(2.0).stream_info(probe.stream)
        assert info.cluster is not None and info.cluster.leader
        leader = next(s for s in cluster.servers if s.name == info.cluster.leader)
    followers = [s for s in cluster.servers if s is not leader]
    async with store_on(leader.url, "casref") as store:
        for srv in followers:
            assert srv.proc is not None
            os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            # A write that cannot commit, in flight at the leader …
            in_flight = asyncio.create_task(store.put("k", b"2"))
            await asyncio.sleep(0.2)
            # … and a CAS on the revision nobody has moved.
            with pytest.raises(MeridianError) as err:
                await store.put("k", b"3", if_revision=revision)
            assert not isinstance(err.value, ConflictError), err.value
            assert isinstance(err.value, UnavailableError), err.value
            assert "not applied" in err.value.message
            with contextlib.suppress(MeridianError):
                await in_flight
        finally:
            for srv in followers:
                assert srv.proc is not None
                os.kill(srv.proc.pid, signal.SIGCONT)
    await asyncio.to_thread(cluster.wait_ready)


async def test_a_cas_beaten_by_a_committed_write_is_a_conflict_with_its_revision(
    cluster: NatsCluster,
) -> None:
    async with store_on(cluster.server("us-east").url, "casref") as store:
        first, _ = await store.put("j", b"1")
        second, _ = await store.put("j", b"2")
        with pytest.raises(ConflictError) as err:
            await store.put("j", b"3", if_revision=first)
        assert err.value.current_revision == second
