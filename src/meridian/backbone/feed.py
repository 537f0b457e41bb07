"""Ordered JetStream consumers as queues: the shape every change feed here uses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def ordered_feed(
    js: JetStreamContext,
    subject: str,
    *,
    stream: str,
    deliver_policy: api.DeliverPolicy | None = None,
    config: api.ConsumerConfig | None = None,
) -> AsyncIterator[asyncio.Queue[Msg]]:
    """An ordered push consumer on ``stream`` filtered by ``subject``, delivered into
    a queue in stream order. nats-py recreates the consumer after a gap or missed
    heartbeats. The consumer is removed on exit."""
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await queue.put(msg)

    sub = await js.subscribe(
        subject,
        cb=on_msg,
        ordered_consumer=True,
        deliver_policy=deliver_policy,
        config=config,
        stream=stream,
    )
    try:
        yield queue
    finally:
        try:
            await sub.unsubscribe()
        except nats.errors.Error as exc:
            log.debug("unsubscribe feed on %s: %s", stream, exc)
