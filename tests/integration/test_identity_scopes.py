"""What one identity owns, another cannot touch: an instance's lease belongs
to the identity that registered it, and idempotency keys are the caller's own.
Two services with certificates from the same CA, against a real agent with
mutual TLS on a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from meridian.agent.app import Agent
from meridian.client import MeridianClient
from meridian.config import MeridianConfig
from meridian.core.errors import FencedError, PermissionDeniedError
from meridian.idempotency import StoredResponse
from meridian.security.pki import ensure_identity, ensure_sandbox
from meridian.testing.nats_server import NatsCluster
from tests.conftest import eventually
from tests.integration.harness import agent_config, running_agent


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
