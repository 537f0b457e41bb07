"""The per-identity cap on streams, and the bounded queue of a watch's feed."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import pytest
from nats.aio.msg import Msg

from meridian.backbone.feed import FeedQueue
from meridian.core.errors import ResourceExhaustedError
from meridian.core.quota import StreamQuota


async def numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def test_a_stream_counts_until_it_ends_or_is_closed() -> None:
    quota = StreamQuota(limit=2)
    a = quota.guard("spiffe://td/service/a", "watch", numbers(3))
    b = quota.guard("spiffe://td/service/a", "watch", numbers(3))
    with pytest.raises(ResourceExhaustedError) as err:
        quota.guard("spiffe://td/service/a", "watch", numbers(3))
    assert "spiffe://td/service/a already hold 2" in err.value.message
    # Another identity has its own share.
    other = quota.guard("spiffe://td/service/b", "watch", numbers(1))
    assert [x async for x in a] == [0, 1, 2]  # ended: its slot is back
    assert quota.held("spiffe://td/service/a") == 1
    await anext(b)
    await b.aclose()  # closed early
    assert quota.held("spiffe://td/service/a") == 0
    assert quota.held("spiffe://td/service/b") == 1
    del other  # dropped unread
    gc.collect()
    assert quota.held("spiffe://td/service/b") == 0


def msg(data: bytes) -> Msg:
    return Msg(_client=None, subject="s", data=data)  # type: ignore[arg-type]


async def test_a_feed_queue_cuts_a_slow_reader_off_after_what_it_holds() -> None:
    q = FeedQueue(max_messages=3, max_bytes=1 << 20)
    for i in range(5):
        q.offer(msg(str(i).encode()))
    assert q.overflowed
    got = [(await q.next("the watch")).data for _ in range(3)]
    assert got == [b"0", b"1", b"2"]  # everything before the gap, in order
    with pytest.raises(ResourceExhaustedError) as err:
        await q.next("the watch")
    assert "the watch fell more than 3 changes" in err.value.message


async def test_a_feed_queue_counts_bytes_and_only_what_is_counted() -> None:
    q = FeedQueue(max_messages=100, max_bytes=10)
    q.offer(msg(b"x" * 6))
    q.offer(msg(b"y" * 6))  # 12 bytes > 10: the gap
    assert q.overflowed
    replay = FeedQueue(max_messages=1, max_bytes=10, counted=lambda m: m.data.startswith(b"new"))
    for _ in range(50):
        replay.offer(msg(b"old"))  # history being replayed: not counted
    replay.offer(msg(b"new"))
    assert not replay.overflowed
    unbounded = FeedQueue()
    for _ in range(10_000):
        unbounded.offer(msg(b"z"))
    assert not unbounded.overflowed
    await asyncio.sleep(0)
