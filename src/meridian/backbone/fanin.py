"""A region's own stream and its aggregate: the fan-in that events, the service
registry and replicated keyspaces share.

Each region writes only to its *own* stream (placed in its cluster); its
*aggregate* stream sources every region's own stream, so each region reads all
regions' messages locally and keeps reading through a partition. This module
holds what the three have in common: the stream configurations, creating
streams idempotently, bounded calls, and restarting sources that never started
(:class:`~meridian.backbone.sources.SourceRepair`).

A subclass may source more than the own stream from a region (events source
resident topics' streams too) by overriding :meth:`RegionFanIn.region_sources`;
everything here (the aggregate's configuration, the repair) goes through it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from nats.js import api
from nats.js.client import JetStreamContext

from meridian.backbone.connection import (
    BackboneConnection,
    add_stream_if_missing,
    reraise_if_cancelling,
    translate_nats_errors,
)
from meridian.backbone.sources import SourceRepair

T = TypeVar("T")


class RegionFanIn:
    """``own`` (this region's stream) and ``aggregate`` (every region's, sourced)."""

    def __init__(
        self,
        conn: BackboneConnection,
        *,
        region: str,
        regions: Sequence[str],
        replicas: int,
        timeout_s: float,
        own_stream: Callable[[str], str],
        aggregate: str,
        aggregate_description: str,
        **aggregate_settings: Any,
    ) -> None:
        self.conn = conn
        self.region = region
        self.regions = list(regions)
        self.replicas = replicas
        self.timeout_s = timeout_s
        self.own_stream = own_stream
        self.own = own_stream(region)
        self.aggregate = aggregate
        self._aggregate_description = aggregate_description
        self._aggregate_settings = aggregate_settings

    @functools.cached_property
    def repair(self) -> SourceRepair:
        """Restarts the aggregate's sources that never started; run it where needed."""
        return SourceRepair(
            self._js,
            aggregate=self.aggregate,
            regions=self.regions,
            config_for=self.aggregate_config,
            timeout_s=self.timeout_s,
        )

    def _js(self) -> JetStreamContext:
        return self.conn.jetstream(self.timeout_s)

    async def _call(self, what: str, aw: Awaitable[T]) -> T:
        """``aw`` within the timeout, its nats-py errors made Meridian errors."""
        with translate_nats_errors(f"cannot {what} in {self.region}"):
            async with asyncio.timeout(self.timeout_s):
                result = await aw
        reraise_if_cancelling()
        return result

    def regional_stream(
        self, name: str, description: str, subjects: Iterable[str] | None = None, **settings: Any
    ) -> api.StreamConfig:
        """A file stream of this region's cluster, at its replica count."""
        return api.StreamConfig(
            name=name,
            description=description,
            subjects=list(subjects) if subjects is not None else None,
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            placement=api.Placement(cluster=self.region),
            **settings,
        )

    def region_sources(self, region: str) -> list[api.StreamSource]:
        """What the aggregate sources from ``region``: its own stream."""
        return [api.StreamSource(name=self.own_stream(region))]

    def aggregate_config(self, regions: Sequence[str] | None = None) -> api.StreamConfig:
        """The aggregate, sourcing ``regions``' streams (all of them by default)."""
        return self.regional_stream(
            self.aggregate,
            self._aggregate_description,
            sources=[
                source
                for r in (self.regions if regions is None else regions)
                for source in self.region_sources(r)
            ],
            **self._aggregate_settings,
        )

    async def ensure_streams(self, configs: Iterable[api.StreamConfig]) -> None:
        """Create each stream unless it exists (idempotent; needs the meta leader).
        A stream made by an earlier version without direct gets gains them."""
        js = self._js()
        for config in configs:
            made = await self._call(
                f"create stream {config.name}", add_stream_if_missing(js, config)
            )
            if not made and config.allow_direct:
                info = await self._call(
                    f"read stream {config.name}", js.stream_info(config.name or "")
                )
                if not info.config.allow_direct:
                    await self._call(f"update stream {config.name}", js.update_stream(config))

    async def ensure_sources(self, config: api.StreamConfig) -> bool:
        """Give the existing stream ``config`` names the sources of ``config`` if its
        own differ (an aggregate made before a source was wanted); returns whether
        it was updated.

        JetStream starts an added source from its stream's first message, stops a
        removed one and leaves a source whose name, filter and transforms are
        unchanged where it was, so an update copies nothing twice."""
        js = self._js()
        info = await self._call(f"read stream {config.name}", js.stream_info(config.name or ""))
        if source_keys(info.config.sources) == source_keys(config.sources):
            return False
        await self._call(f"update the sources of stream {config.name}", js.update_stream(config))
        return True


def source_keys(sources: Iterable[api.StreamSource] | None) -> list[tuple[object, ...]]:
    """What identifies each source to JetStream (stream, filter, transforms), in a
    comparable order: two lists of sources are the same sourcing when these are equal."""
    return sorted(
        (
            s.name,
            s.filter_subject or "",
            tuple((t.src, t.dest) for t in s.subject_transforms or ()),
        )
        for s in sources or ()
    )
