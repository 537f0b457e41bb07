"""A resident topic across the real sandbox: ``eu-orders`` may only be stored and
served in eu-west (the sandbox's ``[[topic]]``, tests/e2e/conftest.py).

Its events reach eu-west's groups; us-east may not publish them and ap-south may
not subscribe to them (RESIDENCY_VIOLATION); and neither region's aggregate
stream ever holds one."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import nats
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from meridian.client import MeridianClient
from meridian.core.errors import DeadlineExceededError, MeridianError, UnavailableError
from meridian.events import model as ev
from tests.conftest import eventually
from tests.e2e.conftest import SandboxHandle, ready_clients
from tests.integration.harness import http_post


@pytest.fixture
async def clients(sandbox: SandboxHandle) -> AsyncIterator[dict[str, MeridianClient]]:
    async def ready(client: MeridianClient, region: str) -> None:
        await client.publish("ready", region, b"", event_id=f"ready-{region}-{uuid.uuid4()}")

    async with ready_clients(sandbox, ready) as out:
        yield out


@contextlib.asynccontextmanager
async def jetstream(sandbox: SandboxHandle, region: str) -> AsyncIterator[Any]:
    """JetStream straight from ``region``'s cluster, as the operator."""
    nc = await nats.connect(sandbox.config.region(region).agent_nats_urls[0], tls=sandbox.ssl)
    try:
        yield nc.jetstream(timeout=10)
    finally:
        await nc.close()


async def held(js: Any, stream: str, subjects: str) -> dict[str, int]:
    info = await js.stream_info(stream, subjects_filter=subjects)
    return dict(info.state.subjects or {})


def reason(exc: BaseException) -> str:
    """The stable code a gRPC call failed with (its ``google.rpc.ErrorInfo`` reason)."""
    cause = exc.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError), exc
    assert cause.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rpc_status.from_call(cause)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    raise AssertionError(f"no ErrorInfo in {exc!r}")


async def test_eu_orders_stay_in_eu_west(
    sandbox: SandboxHandle, clients: dict[str, MeridianClient]
) -> None:
    run = uuid.uuid4().hex[:8]
    placed = f"placed-{run}"
    await clients["eu-west"].publish("eu-orders.placed", "o-1", b"{}", event_id=placed)

    # eu-west's group gets it, as any event. The sandbox may still be settling
    # after an earlier module's partition: a group lookup that times out
    # (DEADLINE_EXCEEDED, UNAVAILABLE) is retried, as a service would.
    async def first() -> Any:
        async with clients["eu-west"].subscribe(
            f"ledger-{run}", topic_filter="eu-orders.>", start_sequence=1
        ) as sub:
            async for d in sub:
                await sub.ack(d)
                if d.event.event_id == placed:
                    return d
        return None

    got = None
    for _ in range(20):
        try:
            got = await asyncio.wait_for(first(), 60)
            break
        except (DeadlineExceededError, UnavailableError):
            await asyncio.sleep(1.0)
    assert (got.event.topic, got.event.origin_region) == ("eu-orders.placed", "eu-west")

    # us-east may not publish it: refused, over gRPC and HTTP, and nothing written.
    refused = f"refused-{run}"
    with pytest.raises(MeridianError) as err:
        await clients["us-east"].publish("eu-orders.placed", "o-2", b"{}", event_id=refused)
    assert reason(err.value) == "RESIDENCY_VIOLATION"
    assert "eu-west" in err.value.message
    status, body = await http_post(
        f"{sandbox.config.region('us-east').http_url}/v1/events/publish",
        {"topic": "eu-orders.placed", "key": "o-2", "eventId": refused},
        sandbox.ssl,
    )
    assert status == 451, body
    assert body["error"]["code"] == "RESIDENCY_VIOLATION"

    # ap-south may not serve it.
    with pytest.raises(MeridianError) as err:
        async with clients["ap-south"].subscribe(
            f"spy-{run}", topic_filter="eu-orders.>", start_sequence=1
        ) as spy:
            async for _ in spy:
                pass
    assert reason(err.value) == "RESIDENCY_VIOLATION"

    # Neither us-east's nor ap-south's aggregate holds any eu-orders event. A
    # plain event published after ours shows each has read eu-west's streams past it.
    plain = f"plain{run}"
    await clients["eu-west"].publish(plain, "k", b"", event_id=f"{plain}-1")
    for region in ("us-east", "ap-south"):
        async with jetstream(sandbox, region) as js:
            aggregate = ev.aggregate_stream(region)
            await eventually(
                functools.partial(held, js, aggregate, f"mev.eu-west.{plain}"),
                bool,
                timeout_s=60,
                what=f"{aggregate} holds eu-west's plain event",
            )
            for subjects in ("mev.*.eu-orders", "mev.*.eu-orders.>"):
                assert await held(js, aggregate, subjects) == {}, (aggregate, subjects)
            # Nor its own stream: the refused publish wrote nothing.
            own = ev.own_stream(region)
            assert await held(js, own, f"mev.{region}.eu-orders.>") == {}, own
