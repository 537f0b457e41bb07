"""The agent's events component: this region's event streams, kept healthy.

It creates the region's own stream, its aggregate of every region's streams,
the dead-letter stream and the inbox bucket, retrying until JetStream can;
until then event calls fail with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from meridian.backbone.connection import BackboneConnection, reraise_if_cancelling
from meridian.backbone.events import EventStreams
from meridian.core.errors import UnavailableError

log = logging.getLogger(__name__)

RETRY_S = 1.0
#: How long a consumer group remembers processed event ids.
INBOX_TTL_S = 7 * 86_400.0


class EventsComponent:
    name = "events"

    def __init__(
        self,
        conn: BackboneConnection,
        *,
        region: str,
        regions: Sequence[str],
        replicas: int,
        timeout_s: float,
    ) -> None:
        self.streams = EventStreams(
            conn,
            region=region,
            regions=regions,
            replicas=replicas,
            timeout_s=timeout_s,
            inbox_ttl_s=INBOX_TTL_S,
        )
        self.ready = False

    def require_ready(self) -> None:
        if not self.ready:
            raise UnavailableError(
                "events are not ready yet in this region (its streams are being set up)"
            )

    async def start(self) -> None:
        return None

    async def run(self) -> None:
        while not self.ready:
            try:
                await self.streams.conn.wait_connected()
                await self.streams.ensure()
                self.ready = True
                log.info("event streams ready")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event streams not ready (%s); retrying in %.1fs", exc, RETRY_S)
                reraise_if_cancelling()
                await asyncio.sleep(RETRY_S)
        await self.streams.repair.run()

    async def stop(self, grace_s: float) -> None:
        return None
