"""Ordered JetStream consumers as queues: the shape every change feed here uses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from meridian.backbone.connection import reraise_if_cancelling
from meridian.core.errors import MeridianError, ResourceExhaustedError

log = logging.getLogger(__name__)


#: Changes a watch may have queued for a caller that reads slower than they come.
WATCH_QUEUE_MESSAGES = 4096
WATCH_QUEUE_BYTES = 64 << 20


class FeedQueue(asyncio.Queue[Msg]):
    """A feed's queue. With limits, a reader that falls too far behind is cut
    off rather than buffered for ever: once ``max_messages`` or ``max_bytes``
    are queued, later messages are dropped, and :meth:`next` raises
    RESOURCE_EXHAUSTED after handing out what came before the gap.

    ``counted`` says which messages count towards the limits: a watch that
    replays a stream's history to rebuild state (and reads it as fast as it
    comes) counts only what it will send on."""

    def __init__(
        self,
        max_messages: int = 0,
        max_bytes: int = 0,
        counted: Callable[[Msg], bool] | None = None,
    ) -> None:
        super().__init__()
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.counted = counted
        self.held = 0
        self.held_bytes = 0
        self.overflowed = False

    def _counts(self, msg: Msg) -> bool:
        return bool(self.max_messages) and (self.counted is None or self.counted(msg))

    def offer(self, msg: Msg) -> None:
        if self.overflowed:
            return
        if self._counts(msg):
            size = len(msg.data)
            if self.held >= self.max_messages or self.held_bytes + size > self.max_bytes:
                self.overflowed = True
                return
            self.held += 1
            self.held_bytes += size
        self.put_nowait(msg)

    async def next(self, what: str) -> Msg:
        """The next message; ResourceExhaustedError once the reader fell behind."""
        if self.overflowed and self.empty():
            raise ResourceExhaustedError(
                f"{what} fell more than {self.max_messages} changes or "
                f"{self.max_bytes >> 20} MiB behind: read faster, or watch again from the "
                "last revision you saw"
            )
        msg = await self.get()
        if self._counts(msg):
            self.held -= 1
            self.held_bytes -= len(msg.data)
        return msg


@contextlib.asynccontextmanager
async def ordered_feed(
    js: JetStreamContext,
    subject: str,
    *,
    stream: str,
    deliver_policy: api.DeliverPolicy | None = None,
    config: api.ConsumerConfig | None = None,
    max_messages: int = 0,
    max_bytes: int = WATCH_QUEUE_BYTES,
    counted: Callable[[Msg], bool] | None = None,
) -> AsyncIterator[FeedQueue]:
    """An ordered push consumer on ``stream`` filtered by ``subject``, delivered into
    a queue in stream order. nats-py recreates the consumer after a gap or missed
    heartbeats. The consumer is removed on exit. ``max_messages``/``max_bytes``
    bound the queue (see :class:`FeedQueue`); ``max_messages`` 0 is unbounded, for
    the agent's own feeds, which it applies as fast as they come."""
    queue = FeedQueue(max_messages, max_bytes, counted)

    async def on_msg(msg: Msg) -> None:
        queue.offer(msg)

    sub = await js.subscribe(
        subject,
        cb=on_msg,
        ordered_consumer=True,
        deliver_policy=deliver_policy,
        config=config,
        stream=stream,
    )
    try:
        # Creating the consumer is a request: a cancellation it swallowed would
        # leave the caller waiting on the queue for ever.
        reraise_if_cancelling()
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


async def every(
    interval_s: float,
    probe: Callable[[], Awaitable[object]],
    *,
    in_flight: int,
    what: str,
) -> None:
    """Start ``probe()`` every ``interval_s`` without waiting for the previous one
    (at most ``in_flight`` under way: while they hang, the next waits for a
    slot). A probe that fails with a Meridian, NATS or timeout error is logged
    and dropped. Runs until cancelled.

    Freshness proofs use it: a proof is as old as its round trip plus the gap
    to the next one, so pipelining keeps the gap at one interval instead of a
    round trip plus an interval.
    """
    slots = asyncio.Semaphore(in_flight)

    async def one() -> None:
        try:
            await probe()
        except (MeridianError, TimeoutError, nats.errors.Error) as exc:
            log.debug("%s: %s", what, exc)
        finally:
            slots.release()

    async with asyncio.TaskGroup() as tg:
        while True:
            await slots.acquire()
            tg.create_task(one())
            await asyncio.sleep(interval_s)
