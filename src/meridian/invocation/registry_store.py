"""The service registry on JetStream: a stream per region, sourced into every region.

For region ``r``:

- ``MGREG_<r>`` lives in cluster ``r`` and holds the latest announcement of
  each instance registered with one of ``r``'s agents, on
  ``mg.reg.<r>.<instance_id>`` (one message per subject). Its agents
  re-announce their instances every ``announce_interval_s``; a deregistered
  or expired instance gets a tombstone (:data:`GONE_HEADER`).
- ``MGREGA_<r>``, also in cluster ``r``, *sources* every region's
  ``MGREG_<s>``: the region's replica of the whole registry. Each agent follows
  its own region's aggregate, so reading the registry never crosses the WAN.

A replica can only be as fresh as the last announcement it received: the
reader (:mod:`meridian.invocation.registry`) drops entries not re-announced
within ``stale_after_s``, which is what happens to a region cut off or lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from nats.js import api

from meridian._pb.meridian.v1 import invocation_pb2
from meridian.backbone.connection import (
    NATS_FAILURES,
    BackboneConnection,
    reraise_if_cancelling,
)
from meridian.backbone.fanin import RegionFanIn
from meridian.backbone.feed import ordered_feed, until_stalled

log = logging.getLogger(__name__)
T = TypeVar("T")

SUBJECT_PREFIX = "mg.reg"
GONE_HEADER = "Meridian-Gone"
#: How often the follower checks its feed for a stall (see feed.until_stalled).
STALL_CHECK_S = 5.0


def own_stream(region: str) -> str:
    return f"MGREG_{region}"


def aggregate_stream(region: str) -> str:
    return f"MGREGA_{region}"


def subject(region: str, instance_id: str) -> str:
    return f"{SUBJECT_PREFIX}.{region}.{instance_id}"


#: Called with (instance_id, status) for an announcement, (instance_id, None) for a tombstone.
OnEntry = Callable[[str, invocation_pb2.InstanceStatus | None], None]


class RegistryStreams(RegionFanIn):
    """This region's registry streams. ``await ensure()`` first."""

    def __init__(
        self,
        conn: BackboneConnection,
        *,
        region: str,
        regions: Sequence[str],
        replicas: int,
        timeout_s: float,
        max_age_s: float,
    ) -> None:
        super().__init__(
            conn,
            region=region,
            regions=regions,
            replicas=replicas,
            timeout_s=timeout_s,
            own_stream=own_stream,
            aggregate=aggregate_stream(region),
            aggregate_description=f"Meridian service registry of every region, in {region}",
            max_msgs_per_subject=1,
            max_age=max_age_s,
        )
        self.max_age_s = max_age_s

    async def ensure(self) -> None:
        """Create both streams if missing (idempotent)."""
        await self.ensure_streams(
            [
                self.regional_stream(
                    self.own,
                    f"Meridian service instances registered in {self.region}",
                    [f"{SUBJECT_PREFIX}.{self.region}.*"],
                    max_msgs_per_subject=1,
                    max_age=self.max_age_s,
                ),
                self.aggregate_config(),
            ]
        )

    async def announce(self, status: invocation_pb2.InstanceStatus) -> None:
        """Publish one instance's current status to this region's stream."""
        await self._call(
            "announce an instance",
            self._js().publish(
                subject(self.region, status.instance.instance_id),
                status.SerializeToString(),
                timeout=self.timeout_s,
            ),
        )

    async def withdraw(self, instance_id: str) -> None:
        """Publish a tombstone: the instance is gone."""
        await self._call(
            "withdraw an instance",
            self._js().publish(
                subject(self.region, instance_id),
                b"",
                timeout=self.timeout_s,
                headers={GONE_HEADER: "1"},
            ),
        )

    async def follow(self, on_entry: OnEntry) -> None:
        """Feed every entry of this region's replica to ``on_entry``, latest per
        instance first, then as they arrive; until cancelled. The feed is
        recreated after an error or a stall."""
        while True:
            try:
                await self._follow_once(on_entry)
            except NATS_FAILURES as exc:
                reraise_if_cancelling()
                log.info("registry feed in %s restarts: %s", self.region, exc)
            await asyncio.sleep(1.0)

    async def _follow_once(self, on_entry: OnEntry) -> None:
        js = self._js()
        progress = [0]
        async with ordered_feed(
            js,
            f"{SUBJECT_PREFIX}.>",
            stream=self.aggregate,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        ) as queue:
            stall = asyncio.create_task(until_stalled(js, self.aggregate, progress, STALL_CHECK_S))
            try:
                while not stall.done():
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait(
                        {getter, stall}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if getter not in done:
                        getter.cancel()
                        break
                    msg = getter.result()
                    if msg.metadata is not None:
                        progress[0] = int(msg.metadata.sequence.stream)
                    instance_id = msg.subject.rsplit(".", 1)[-1]
                    if (msg.headers or {}).get(GONE_HEADER) or not msg.data:
                        on_entry(instance_id, None)
                        continue
                    status = invocation_pb2.InstanceStatus()
                    try:
                        status.ParseFromString(msg.data)
                    except Exception:
                        log.warning("skipping an unreadable registry entry on %s", msg.subject)
                        continue
                    on_entry(instance_id, status)
                log.info("registry feed in %s stalled; recreating it", self.region)
            finally:
                stall.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stall
