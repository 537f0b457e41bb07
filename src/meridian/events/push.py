"""HTTP push: the agent POSTs a consumer group's deliveries to a registered endpoint.

``RegisterPush`` stores the registration in this region's push bucket
(``mg__push_<region>``, keyed by the group's consumer) and starts a pusher;
on start the agent resumes every stored registration. A pusher reads the
group like any subscriber (:class:`~meridian.events.delivery.GroupReader`) and
POSTs each delivery as JSON (a ``Delivery`` in the proto3 JSON mapping), at
most ``max_in_flight`` at once, with the headers ``Meridian-Event-Id``,
``Meridian-Delivery-Attempt``, ``Meridian-Group`` and the event's
``traceparent``. A 2xx answer acks; anything else, or no answer within
``ack_wait``, nacks: redelivery with backoff, then the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
import nats.js.errors
from google.protobuf import json_format
from nats.js import api

from meridian._pb.meridian.v1 import events_pb2 as pb
from meridian.backbone.connection import reraise_if_cancelling
from meridian.backbone.lifecycle import Background
from meridian.backbone.resolve import CheckedResolver
from meridian.core.calls import CALLER
from meridian.core.endpoints import SANDBOX, EndpointPolicy
from meridian.core.errors import (
    FieldViolation,
    InvalidArgumentError,
    ResidencyViolationError,
    UnavailableError,
)
from meridian.events import model as ev
from meridian.events.delivery import GroupReader
from meridian.events.groups import ConsumerGroups, GroupOptions

log = logging.getLogger(__name__)

RETRY_S = 1.0


class PushDeliveries(Background):
    """Agent component running one pusher per registration in this region; serves
    once the registrations made earlier are resumed."""

    name = "push"

    def __init__(
        self,
        groups: ConsumerGroups,
        *,
        region: str,
        replicas: int,
        endpoints: EndpointPolicy = SANDBOX,
    ) -> None:
        #: Where push endpoints may be, beyond the fixed rules.
        self.endpoints = endpoints
        super().__init__()
        self.groups = groups
        self.region = region
        self.replicas = replicas
        self.bucket = f"mg__push_{region}"
        self.pushers: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._group: asyncio.TaskGroup | None = None

    # -- lifecycle --------------------------------------------------------

    async def run(self) -> None:
        # Push endpoints' names are checked again when dialled (backbone/resolve.py).
        connector = aiohttp.TCPConnector(resolver=CheckedResolver(self.endpoints, "endpoint"))
        async with aiohttp.ClientSession(connector=connector) as session, asyncio.TaskGroup() as tg:
            self._session, self._group = session, tg
            while True:
                try:
                    await self._resume_registrations()
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # events not ready, no JetStream yet
                    log.debug("push registrations not loaded yet: %s", exc)
                    reraise_if_cancelling()
                    await asyncio.sleep(RETRY_S)
            self.serving()
            await asyncio.Event().wait()  # pushers run in the task group until stop

    async def _kv(self) -> nats.js.kv.KeyValue:
        js = self.groups.streams.conn.jetstream(self.groups.streams.timeout_s)
        try:
            return await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            return await js.create_key_value(
                api.KeyValueConfig(
                    bucket=self.bucket,
                    description=f"Meridian HTTP push registrations of {self.region}",
                    history=1,
                    replicas=self.replicas,
                    storage=api.StorageType.FILE,
                    placement=api.Placement(cluster=self.region),
                )
            )

    async def _resume_registrations(self) -> None:
        self.groups.component.require_ready()
        kv = await self._kv()
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            keys = []
        resumed = 0
        for key in keys:
            entry = await kv.get(key)
            request = pb.RegisterPushRequest.FromString(entry.value or b"")
            try:
                opts = self.groups.group_options(request)
            except ResidencyViolationError as exc:
                # Registered before its topic was declared resident elsewhere:
                # kept (an operator may move it), but never served from here.
                log.warning("push registration %s not resumed: %s", key, exc.message)
                continue
            self._start_pusher(key, request, opts)
            resumed += 1
        log.info("push registrations resumed", extra={"count": resumed})

    # -- registrations (EventService.RegisterPush, UnregisterPush) ------------------------------------------------------------

    async def register(self, request: pb.RegisterPushRequest) -> None:
        violations = ev.endpoint_violations(request.endpoint, self.endpoints)
        try:
            opts = self.groups.group_options(request)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(list(exc.violations) + violations) from None
        except ResidencyViolationError:
            if violations:  # a bad request is INVALID_ARGUMENT first, as everywhere
                raise InvalidArgumentError(violations) from None
            raise
        if violations:
            raise InvalidArgumentError(violations)
        if not self.ready:
            raise UnavailableError("HTTP push is not ready yet in this region")
        # The group is created here, for its owner and within the owner's quota,
        # where the caller hears of a refusal; the pusher then binds to it.
        await self.groups.streams.ensure_consumer(
            opts.source.spec, opts.start, CALLER.get().identity, self.groups.max_groups_per_identity
        )
        key = opts.source.spec.name
        kv = await self._kv()
        await kv.put(key, request.SerializeToString())
        self._start_pusher(key, request, opts)

    async def unregister(self, request: pb.UnregisterPushRequest) -> None:
        violations: list[FieldViolation] = []
        source = self.groups.source_of(
            request.group,
            request.WhichOneof("source"),
            request.topic_filter,
            request.keyspace,
            violations,
        )
        if violations:
            raise InvalidArgumentError(violations)
        assert source is not None
        key = source.spec.name
        kv = await self._kv()
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await kv.delete(key)
        task = self.pushers.pop(key, None)
        if task is not None:
            task.cancel()

    # -- pushing ------------------------------------------------------------------

    def _start_pusher(self, key: str, request: pb.RegisterPushRequest, opts: GroupOptions) -> None:
        old = self.pushers.pop(key, None)
        if old is not None:
            old.cancel()
        assert self._group is not None
        self.pushers[key] = self._group.create_task(
            self._push(request, opts), name=f"push-{request.group}"
        )

    async def _push(self, request: pb.RegisterPushRequest, opts: GroupOptions) -> None:
        while True:
            reader: GroupReader | None = None
            try:
                reader = await self.groups.open(
                    request.group, opts.source, opts.start, opts.max_in_flight, opts.max_deliveries
                )
                async with asyncio.TaskGroup() as posts:
                    while True:
                        await reader.wait_for_room()
                        for delivery in await reader.fetch():
                            posts.create_task(
                                self._post(reader, request, delivery, opts.ack_wait_s)
                            )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS trouble: reopen the group
                log.warning("push to %s for %s stopped: %s", request.endpoint, request.group, exc)
            finally:
                if reader is not None:
                    await reader.close()
            reraise_if_cancelling()
            await asyncio.sleep(RETRY_S)

    async def _post(
        self,
        reader: GroupReader,
        request: pb.RegisterPushRequest,
        delivery: pb.Delivery,
        wait_s: float,
    ) -> None:
        assert self._session is not None
        headers = {
            "Content-Type": "application/json",
            "Meridian-Event-Id": delivery.event.event_id,
            "Meridian-Delivery-Attempt": str(delivery.attempt),
            "Meridian-Group": request.group,
        }
        if "traceparent" in delivery.event.headers:
            headers["traceparent"] = delivery.event.headers["traceparent"]
        body = json_format.MessageToJson(delivery, indent=None)
        ok = False
        try:
            async with self._session.post(
                request.endpoint,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=wait_s),
                allow_redirects=False,
            ) as resp:
                ok = 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("push of %s to %s failed: %s", delivery.event.event_id, request.endpoint, exc)
        try:
            if ok:
                await reader.ack(delivery.delivery_id)
            else:
                await reader.nack(delivery.delivery_id, None)
        except Exception as exc:  # the redelivery after ack_wait covers it
            log.debug("settling a push delivery failed: %s", exc)
