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


async def until_stalled(
    js: JetStreamContext, stream: str, progress: list[int], check_s: float
) -> None:
    """Return once ``stream`` holds messages a feed has not taken (``progress[0]``
    is the last stream sequence it took) and the feed took nothing since the
    previous check, ``check_s`` earlier. An unreachable stream is not a stall.

    Ordered consumers across a gateway have been seen to stop after a
    partition heals without nats-py noticing; callers recreate the feed.
    """
    previous = -1
    while True:
        await asyncio.sleep(check_s)
        try:
            last = int((await js.stream_info(stream)).state.last_seq)
        except (TimeoutError, nats.errors.Error):
            previous = -1  # can't tell while the stream is out of reach
            continue
        finally:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
        if last > progress[0] and progress[0] == previous:
            return
        previous = progress[0]
