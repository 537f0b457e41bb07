"""Event subscriptions for :class:`meridian.client.MeridianClient`.

A subscription is one gRPC bidirectional stream: deliveries come down it, and
acks and nacks go up it. Use it as an async context manager and iterate::

    async with client.subscribe("billing", topic_filter="orders.*") as sub:
        async for delivery in sub:
            handle(delivery.event)
            await sub.ack(delivery)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from meridian._pb.meridian.v1 import events_pb2


@dataclass(frozen=True)
class Event:
    topic: str
    key: str
    payload: bytes
    event_id: str
    origin_region: str
    origin_sequence: int
    #: Epoch seconds (0 if unknown).
    published_at: float
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    delivery_id: int
    event: Event
    #: 1 on the first delivery.
    attempt: int
    #: Sequence in the region's aggregate stream (for replay).
    sequence: int


def _event(e: events_pb2.Event) -> Event:
    return Event(
        topic=e.topic,
        key=e.key,
        payload=e.payload,
        event_id=e.event_id,
        origin_region=e.origin_region,
        origin_sequence=e.origin_sequence,
        published_at=e.published_at.ToNanoseconds() / 1e9 if e.HasField("published_at") else 0.0,
        headers=dict(e.headers),
    )


class Subscription:
    """One subscriber of a consumer group. Ack or nack every delivery."""

    def __init__(self, call: Any, open_request: events_pb2.SubscribeRequest) -> None:
        self._call = call
        self._open = open_request

    async def __aenter__(self) -> Subscription:
        await self._send(self._open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _send(self, request: events_pb2.SubscribeRequest) -> None:
        from meridian.client import error_from_rpc

        try:
            await self._call.write(request)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        from meridian.client import error_from_rpc

        while True:
            try:
                message = await self._call.read()
            except grpc.aio.AioRpcError as exc:
                raise error_from_rpc(exc) from exc
            if message is grpc.aio.EOF:
                return
            yield Delivery(
                message.delivery_id, _event(message.event), message.attempt, message.sequence
            )

    async def ack(self, delivery: Delivery | int) -> None:
        delivery_id = delivery if isinstance(delivery, int) else delivery.delivery_id
        await self._send(events_pb2.SubscribeRequest(ack=events_pb2.Ack(delivery_id=delivery_id)))

    async def nack(self, delivery: Delivery | int, *, delay_s: float | None = None) -> None:
        """Redeliver later: after ``delay_s``, or after the backoff for its attempt."""
        delivery_id = delivery if isinstance(delivery, int) else delivery.delivery_id
        nack = events_pb2.Nack(delivery_id=delivery_id)
        if delay_s is not None:
            nack.delay.CopyFrom(_duration(delay_s))
        await self._send(events_pb2.SubscribeRequest(nack=nack))

    async def close(self, timeout_s: float = 5.0) -> None:
        """End the subscription: the acks and nacks already sent are applied, and
        deliveries not acked are redelivered to the group's other subscribers."""
        with contextlib.suppress(Exception):
            await self._call.done_writing()
            # The agent ends the stream once it has handled everything sent.
            async with asyncio.timeout(timeout_s):
                await self._call.code()
        self._call.cancel()


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d
