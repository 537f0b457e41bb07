"""What one identity owns, another cannot touch: an instance's lease belongs
to the identity that registered it, and idempotency keys are the caller's own.
Two services with certificates from the same CA, against a real agent with
mutual TLS on a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from meridian.agent.app import Agent
from meridian.client import MeridianClient
from meridian.config import MeridianConfig
from meridian.core.errors import (
    FencedError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from meridian.idempotency import StoredResponse
from meridian.security.pki import ensure_identity, ensure_sandbox
from meridian.testing.nats_server import NatsCluster
from tests.conftest import eventually
from tests.integration.harness import agent_config, ready_agent, running_agent


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    # One region's cluster: the registry's streams are regional, and so are
    # idempotency records with storage = "regional".
    with NatsCluster("us-east") as c:
        yield c


@pytest.fixture(scope="module")
def config(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> MeridianConfig:
    cfg = agent_config(
        cluster,
        idempotency={"storage": "regional"},
        ca_dir=tmp_path_factory.mktemp("identity-scopes") / "ca",
    )
    ensure_sandbox(cfg)
    return cfg


@contextlib.asynccontextmanager
async def serving_agent(config: MeridianConfig) -> AsyncIterator[Agent]:
    async with running_agent(config) as a:
        await asyncio.wait_for(  # hang guards
            asyncio.gather(a.registry.wait_serving(), a.idempotency.wait_serving()), 120
        )
        yield a


def client(config: MeridianConfig, service: str) -> MeridianClient:
    folder: Path = ensure_identity(config, f"service/{service}")
    return MeridianClient(config.region("us-east").grpc_address, tls=folder)


async def test_a_lease_is_its_registrants(config: MeridianConfig) -> None:
    async with (
        serving_agent(config),
        client(config, "orders") as orders,
        client(config, "mallory") as mallory,
    ):
        iid = await eventually(
            lambda: orders.register("orders", "127.0.0.1:9", instance_id="orders-1", ttl_s=30),
            bool,
            what="registered",
        )
        assert iid == "orders-1"
        for attempt in (
            mallory.register("orders", "127.0.0.1:10", instance_id="orders-1", ttl_s=30),
            mallory.heartbeat("orders-1"),
            mallory.deregister("orders-1"),
        ):
            with pytest.raises(PermissionDeniedError) as err:
                await attempt
            assert "spiffe://meridian.local/service/orders" in err.value.message
            assert "spiffe://meridian.local/service/mallory" in err.value.message
        # Nothing changed: still orders' instance, at orders' endpoint.
        listed = await orders.list_instances("orders")
        (status,) = [s for s in listed if s.instance.instance_id == iid]
        assert status.instance.endpoint == "127.0.0.1:9"
        await orders.heartbeat("orders-1")
        await orders.deregister("orders-1")


async def test_idempotency_keys_are_the_callers_own(config: MeridianConfig) -> None:
    async with (
        serving_agent(config),
        client(config, "orders") as orders,
        client(config, "mallory") as mallory,
    ):
        begun = await eventually(
            lambda: orders.begin("shop", "order-1", b'{"qty": 1}'),
            lambda b: b.outcome == "new",
            what="a first Begin",
        )
        # The same scope and key from another identity is another record: it
        # neither sees orders' claim nor can complete or abort it.
        theirs = await mallory.begin("shop", "order-1", b'{"qty": 99}')
        assert theirs.outcome == "new"
        with pytest.raises(FencedError):
            await mallory.complete(
                "shop", "order-1", begun.fencing_token, StoredResponse(200, b"stolen")
            )
        with pytest.raises(FencedError):
            await mallory.abort("shop", "order-1", begun.fencing_token)
        await orders.complete("shop", "order-1", begun.fencing_token, StoredResponse(201, b"ok"))
        again = await orders.begin("shop", "order-1", b'{"qty": 1}')
        assert again.outcome == "completed"
        assert again.response is not None and again.response.body == b"ok"
        still = await mallory.begin("shop", "order-1", b'{"qty": 99}')
        assert still.outcome == "in_progress"  # mallory's own claim, untouched


async def test_instance_leases_are_capped_per_identity(config: MeridianConfig) -> None:
    capped = dataclasses.replace(
        config, invocation=dataclasses.replace(config.invocation, max_instances_per_identity=3)
    )
    async with (
        serving_agent(capped),
        client(capped, "orders") as orders,
        client(capped, "mallory") as mallory,
    ):
        for i in range(3):
            await eventually(
                lambda i=i: orders.register(  # type: ignore[misc]
                    "orders", f"127.0.0.1:{20 + i}", instance_id=f"cap-{i}", ttl_s=30
                ),
                bool,
                what=f"lease {i}",
            )
        with pytest.raises(ResourceExhaustedError) as err:
            await orders.register("orders", "127.0.0.1:23", instance_id="cap-3", ttl_s=30)
        assert "invocation.max_instances_per_identity = 3" in err.value.message
        assert "spiffe://meridian.local/service/orders" in err.value.message
        # Nothing was leased: the refused instance is nowhere.
        listed = await orders.list_instances("orders")
        assert "cap-3" not in {s.instance.instance_id for s in listed}
        # Renewing or moving an instance the identity holds is not a new lease.
        await orders.register("orders", "127.0.0.1:29", instance_id="cap-0", ttl_s=30)
        # The cap is per identity: another one still registers.
        assert await mallory.register("mallory", "127.0.0.1:30", instance_id="m-0", ttl_s=30)
        # Giving one back makes room.
        await orders.deregister("cap-1")
        assert await orders.register("orders", "127.0.0.1:23", instance_id="cap-3", ttl_s=30)
        for iid in ("cap-0", "cap-2", "cap-3"):
            await orders.deregister(iid)
        await mallory.deregister("m-0")


async def test_consumer_groups_are_capped_per_identity(
    config: MeridianConfig, cluster: NatsCluster
) -> None:
    async def first_read(c: MeridianClient, group: str) -> None:
        # A group's consumer just created can answer UNAVAILABLE (retryable)
        # while JetStream settles: retry that; the quota is what is tested.
        for attempt in range(20):
            try:
                async with c.subscribe(group, topic_filter="quota.*") as sub:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            async for _ in sub:
                                break
                return
            except UnavailableError:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5)

    async with (
        ready_agent(config) as agent,
        client(config, "orders") as orders,
        client(config, "mallory") as mallory,
    ):
        agent.push.groups.max_groups_per_identity = 2
        for group in ("billing", "shipping"):
            await first_read(orders, group)
        await first_read(orders, "billing")  # an existing group is not a new one
        with pytest.raises(ResourceExhaustedError) as err:
            await first_read(orders, "audit")
        assert "spiffe://meridian.local/service/orders" in err.value.message
        assert "at most 2" in err.value.message
        with pytest.raises(ResourceExhaustedError):  # nor as an HTTP push group
            await orders.register_push("audit", "http://127.0.0.1:9/hook", topic_filter="quota.*")
        # Nothing was created for the refused groups.
        nc = await nats.connect(cluster.urls)
        try:
            stream = agent.push.groups.streams.aggregate
            made = await nc.jetstream().consumers_info(stream)
        finally:
            await nc.close()
        owners = {
            c.name: (c.config.metadata or {}).get("meridian-owner", "") for c in made if c.name
        }
        assert not any("audit" in n for n in owners)
        assert sorted(owners.values()) == ["spiffe://meridian.local/service/orders"] * 2
        # Another identity has its own share.
        await first_read(mallory, "audit")
