"""Restarting an aggregate stream's sources that never became active.

Aggregates (``EVA_<region>``, ``MGREGA_<region>``) source every region's own
stream. A source whose stream did not exist yet when the aggregate was made
(the regions' agents start one after another) is retried by nats-server with a
backoff that has been seen to take 35 s to minutes. Once the stream exists,
dropping the source and adding it back starts it at once; JetStream resumes a
re-added source where it left off (also one with subject transforms, as long
as they are the same: checked against nats-server 2.15).

A region may be sourced through several streams (events: its own stream and,
once per resident topic, its resident stream). The repair drops and re-adds
all of the region's sources together, each exactly as ``config_for`` gives
it, so filters and transforms are kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import nats.js.errors
from nats.js import api
from nats.js.client import JetStreamContext

from meridian.backbone.connection import reraise_if_cancelling

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How often an aggregate's sources are checked.
CHECK_INTERVAL_S = 3.0


class SourceRepair:
    """Checks one aggregate stream and restarts the sources that stayed idle."""

    def __init__(
        self,
        js: Callable[[], JetStreamContext],
        *,
        aggregate: str,
        regions: Sequence[str],
        config_for: Callable[[Sequence[str]], api.StreamConfig],
        timeout_s: float,
    ) -> None:
        """``config_for(regions)``: the aggregate sourcing only ``regions``."""
        self.js = js
        self.aggregate = aggregate
        self.regions = list(regions)
        self.config_for = config_for
        self.timeout_s = timeout_s
        #: Sourced stream -> the region it comes from.
        self._region_of = {
            source.name: r for r in self.regions for source in config_for([r]).sources or ()
        }
        self._idle: set[str] = set()

    async def _call(self, aw: Awaitable[T]) -> T:
        async with asyncio.timeout(self.timeout_s):
            return await aw

    async def check(self) -> list[str]:
        """Restart sources idle at this check and the one before; returns their regions."""
        js = self.js()
        info = await self._call(js.stream_info(self.aggregate))
        idle = {
            src.name
            for src in info.sources or []
            if src.name in self._region_of and (src.active is None or src.active < 0)
        }
        # Only sources idle twice in a row: a fresh source is idle briefly.
        stuck, self._idle = idle & self._idle, idle
        startable: set[str] = set()
        for stream in sorted(stuck):
            try:
                await self._call(js.stream_info(stream))
            except nats.js.errors.NotFoundError:
                continue  # not made yet: nothing to start
            startable.add(self._region_of[stream])
        restarted: list[str] = []
        for region in (r for r in self.regions if r in startable):
            others = [r for r in self.regions if r != region]
            await self._call(js.update_stream(self.config_for(others)))
            await self._call(js.update_stream(self.config_for(self.regions)))
            restarted.append(region)
        return restarted

    async def run(self) -> None:
        """Check every CHECK_INTERVAL_S until cancelled."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            try:
                restarted = await self.check()
            except Exception as exc:  # tried again next round
                reraise_if_cancelling()
                log.debug("source check of %s failed: %s", self.aggregate, exc)
                continue
            if restarted:
                log.info("restarted %s's sources from %s", self.aggregate, ", ".join(restarted))
