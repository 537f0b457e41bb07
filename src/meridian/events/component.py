"""The agent's events component: this region's event streams, kept healthy.

It creates the region's own stream, its resident stream (where a declared
topic allows the region), its aggregate of every region's streams, the
dead-letter stream and the inbox bucket, retrying until JetStream can; until
then event calls fail with UNAVAILABLE.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from meridian.backbone.connection import (
    BackboneConnection,
    ensure_until_done,
)
from meridian.backbone.lifecycle import Background
from meridian.core.errors import UnavailableError
from meridian.core.residency import TopicResidency
from meridian.events.streams import EventStreams

log = logging.getLogger(__name__)

#: How long a consumer group remembers processed event ids.
INBOX_TTL_S = 7 * 86_400.0


class EventsComponent(Background):
    """This region's event streams; serves once they exist."""

    name = "events"

    def __init__(
        self,
        conn: BackboneConnection,
        *,
        region: str,
        regions: Sequence[str],
        replicas: int,
        timeout_s: float,
        topics: Iterable[TopicResidency] = (),
    ) -> None:
        """``topics``: the declared resident topics (``[[topic]]``)."""
        super().__init__()
        self.streams = EventStreams(
            conn,
            region=region,
            regions=regions,
            replicas=replicas,
            timeout_s=timeout_s,
            inbox_ttl_s=INBOX_TTL_S,
            topics=topics,
        )

    def require_ready(self) -> None:
        if not self.ready:
            raise UnavailableError(
                "events are not ready yet in this region (its streams are being set up)"
            )

    async def run(self) -> None:
        await ensure_until_done(self.streams.conn, self.streams.ensure, "event streams")
        self.serving()
        log.info("event streams ready")
        await self.streams.repair.run()
