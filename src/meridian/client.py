"""A typed async Python client for a Meridian agent (gRPC).

::

    async with MeridianClient("127.0.0.1:14020") as m:
        rev = await m.put("accounts", "alice", b"100")
        entry = await m.get("accounts", "alice", consistency=Bounded(0.5))
        await m.put("accounts", "alice", b"90", if_revision=entry.revision)

Errors come back as the same typed Meridian errors the agent raised, rebuilt
from the call's ``google.rpc`` details (``ErrorInfo`` with the stable code,
``BadRequest`` with the field violations):
:class:`~meridian.core.errors.ConflictError` (with ``current_revision``),
:class:`~meridian.core.errors.NotFoundError`,
:class:`~meridian.core.errors.QuorumUnavailableError`,
:class:`~meridian.core.errors.InvalidArgumentError` (every violation), and so
on. Cancelling a call cancels the RPC.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from meridian._pb.meridian.v1 import (
    events_pb2,
    idempotency_pb2,
    invocation_pb2,
    state_pb2,
)
from meridian.client_channel import FollowedChannel
from meridian.client_flags import Flag, FlagEvaluation, Flags
from meridian.client_types import (
    _KINDS,
    _OUTCOMES,
    _SERVED,
    Begun,
    Bounded,
    Entry,
    Eventual,
    OnceResult,
    OutgoingEvent,
    Page,
    PutItem,
    ReadConsistency,
    ReadResult,
    Sibling,
    Strong,
    WatchEvent,
    _consistency,
    _entry,
    _set_source,
    _start,
    error_from_item,
    error_from_rpc,
)
from meridian.core.canonical import PayloadKind, fingerprint
from meridian.core.errors import (
    IdempotencyInProgressError,
    IdempotencyMismatchError,
    MeridianError,
)
from meridian.idempotency import StoredResponse
from meridian.security.tls import TlsFiles
from meridian.subscription import Subscription

T = TypeVar("T")


__all__ = [
    "Begun",
    "Bounded",
    "Entry",
    "Eventual",
    "Flag",
    "FlagEvaluation",
    "MeridianClient",
    "OnceResult",
    "OutgoingEvent",
    "Page",
    "PutItem",
    "ReadConsistency",
    "ReadResult",
    "Sibling",
    "Strong",
    "WatchEvent",
    "error_from_rpc",
]


class MeridianClient:
    """A connection to one agent. Use as an async context manager."""

    def __init__(
        self, target: str, *, timeout_s: float = 10.0, tls: TlsFiles | Path | str | None = None
    ) -> None:
        """``tls``: mutual TLS with this identity (a :class:`TlsFiles`, or a folder
        with cert.pem, key.pem and bundle.pem); the agent's certificate must chain
        to the bundle and name the host of ``target``. None: plaintext, for an
        agent in insecure mode."""
        self.target = target
        self.timeout_s = timeout_s
        options = [
            ("grpc.max_receive_message_length", 10 << 20),
            ("grpc.max_send_message_length", 10 << 20),
        ]
        files = (
            None if tls is None else tls if isinstance(tls, TlsFiles) else TlsFiles.in_folder(tls)
        )
        #: The channel follows the certificate files (meridian.client_channel).
        self.channels = FollowedChannel(target, options, files)

    # The service stubs of the channel for the next call.
    _state = property(lambda self: self.channels.stubs().state)
    _idem = property(lambda self: self.channels.stubs().idem)
    _events = property(lambda self: self.channels.stubs().events)
    _registry = property(lambda self: self.channels.stubs().registry)
    _invocation = property(lambda self: self.channels.stubs().invocation)

    flags = property(lambda self: Flags(lambda: self.channels.stubs().flags, self._call))

    async def _call(self, fn: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await fn(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc

    async def get(
        self, keyspace: str, key: str, *, consistency: ReadConsistency = Strong()
    ) -> ReadResult:
        """Read ``key``; raises NotFoundError if it does not exist."""
        resp = await self._call(
            self._state.Get,
            state_pb2.GetRequest(keyspace=keyspace, key=key, consistency=_consistency(consistency)),
        )
        return _read_result(resp)

    async def get_many(
        self, keyspace: str, keys: list[str], *, consistency: ReadConsistency = Strong()
    ) -> list[ReadResult | MeridianError]:
        """Read up to 1000 keys in one call; per key a ReadResult, or its error
        (NotFoundError for a missing key). A bad request raises for the whole call."""
        resp = await self._call(
            self._state.GetMany,
            state_pb2.GetManyRequest(
                keyspace=keyspace, keys=keys, consistency=_consistency(consistency)
            ),
        )
        return [
            error_from_item(r.error) if r.HasField("error") else _read_result(r.response)
            for r in resp.results
        ]

    async def put_many(self, puts: list[PutItem]) -> list[int | MeridianError]:
        """Up to 1000 independent writes in one call (not a transaction): per write
        its new revision, or its error (ConflictError, ...). A bad write raises
        InvalidArgumentError for the whole call, and nothing is written."""
        requests = [_put_request(p.keyspace, p.key, p.value, p.if_revision, None) for p in puts]
        resp = await self._call(self._state.PutMany, state_pb2.PutManyRequest(puts=requests))
        return [
            error_from_item(r.error) if r.HasField("error") else int(r.written.revision)
            for r in resp.results
        ]

    async def put(
        self,
        keyspace: str,
        key: str,
        value: bytes,
        *,
        if_revision: int | None = None,
        supersedes: list[int] | None = None,
    ) -> int:
        """Write ``key``; returns the new revision. ConflictError if ``if_revision`` is stale.
        ``supersedes`` names the multi-value siblings (by hlc) this write resolves."""
        request = _put_request(keyspace, key, value, if_revision, supersedes)
        return int((await self._call(self._state.Put, request)).revision)

    async def create(self, keyspace: str, key: str, value: bytes) -> int:
        """Write ``key`` only if absent; ConflictError otherwise."""
        request = state_pb2.CreateRequest(keyspace=keyspace, key=key, value=value)
        return int((await self._call(self._state.Create, request)).revision)

    async def delete(self, keyspace: str, key: str, *, if_revision: int | None = None) -> int:
        request = state_pb2.DeleteRequest(keyspace=keyspace, key=key)
        if if_revision is not None:
            request.if_revision = if_revision
        return int((await self._call(self._state.Delete, request)).revision)

    async def rehome(self, keyspace: str, partition: str, region: str) -> tuple[str, int]:
        """Move a regional keyspace's partition to home ``region`` (an audited
        admin change); returns (the previous home, the partition's last revision)."""
        request = state_pb2.RehomeRequest(keyspace=keyspace, partition=partition, region=region)
        reply = await self._call(self._state.Rehome, request)
        return reply.previous_region, int(reply.revision)

    async def increment(self, keyspace: str, key: str, delta: int) -> int:
        """Add ``delta`` to a counter key; returns the write's revision."""
        request = state_pb2.IncrementRequest(keyspace=keyspace, key=key, delta=delta)
        return int((await self._call(self._state.Increment, request)).revision)

    async def set_add(self, keyspace: str, key: str, *elements: str) -> int:
        request = state_pb2.SetRequest(keyspace=keyspace, key=key, elements=list(elements))
        return int((await self._call(self._state.SetAdd, request)).revision)

    async def set_remove(self, keyspace: str, key: str, *elements: str) -> int:
        request = state_pb2.SetRequest(keyspace=keyspace, key=key, elements=list(elements))
        return int((await self._call(self._state.SetRemove, request)).revision)

    async def scan_page(
        self,
        keyspace: str,
        prefix: str = "",
        *,
        limit: int = 100,
        page_token: str = "",
        consistency: ReadConsistency = Eventual(),
    ) -> Page:
        resp = await self._call(
            self._state.Scan,
            state_pb2.ScanRequest(
                keyspace=keyspace,
                prefix=prefix,
                limit=limit,
                page_token=page_token,
                consistency=_consistency(consistency),
            ),
        )
        return Page(
            [_entry(e) for e in resp.entries],
            resp.next_page_token,
            _SERVED[resp.served],
            resp.staleness_bound.ToNanoseconds() / 1e9,
        )

    async def scan(
        self, keyspace: str, prefix: str = "", *, consistency: ReadConsistency = Eventual()
    ) -> AsyncIterator[Entry]:
        """Every entry under ``prefix``, in key order, page by page."""
        token = ""
        while True:
            page = await self.scan_page(keyspace, prefix, page_token=token, consistency=consistency)
            for entry in page.entries:
                yield entry
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def watch(
        self, keyspace: str, prefix: str = "", *, from_revision: int | None = None
    ) -> AsyncIterator[WatchEvent]:
        """Changes under ``prefix``: new ones, or replayed from ``from_revision`` on.
        Stop iterating (or cancel) to end the stream."""
        request = state_pb2.WatchRequest(keyspace=keyspace, prefix=prefix)
        if from_revision is not None:
            request.from_revision = from_revision
        call = self._state.Watch(request)
        try:
            async for event in call:
                yield WatchEvent(
                    "delete" if event.kind == state_pb2.WatchEvent.KIND_DELETE else "put",
                    _entry(event.entry),
                )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    # -- idempotency ------------------------------------------------------

    async def begin(
        self,
        scope: str,
        key: str,
        request: bytes,
        *,
        kind: PayloadKind = PayloadKind.JSON,
        lease_s: float | None = None,
    ) -> Begun:
        """Claim idempotency ``key`` (scoped by ``scope``) for ``request``.

        The request's fingerprint is computed here (RFC 8785 canonical JSON, or
        the raw bytes), so only the 64-hex digest travels.
        """
        message = idempotency_pb2.BeginRequest(
            scope=scope,
            key=key,
            fingerprint=fingerprint(request, kind),
            payload_kind=_KINDS[kind],
        )
        if lease_s is not None:
            message.lease.FromNanoseconds(int(lease_s * 1e9))
        resp = await self._call(self._idem.Begin, message)
        return Begun(
            outcome=_OUTCOMES.get(resp.outcome, "unspecified"),
            fingerprint=resp.fingerprint,
            fencing_token=resp.fencing_token,
            lease_expires_at=resp.lease_expires_at.ToNanoseconds() / 1e9
            if resp.HasField("lease_expires_at")
            else 0.0,
            response=StoredResponse(
                resp.response.status,
                resp.response.body,
                tuple(sorted(resp.response.headers.items())),
            )
            if resp.HasField("response")
            else None,
            took_over=resp.took_over,
        )

    async def complete(
        self, scope: str, key: str, fencing_token: int, response: StoredResponse
    ) -> float:
        """Store the command's response; returns when it will be forgotten (epoch s).
        FencedError if ``fencing_token`` no longer holds the key."""
        resp = await self._call(
            self._idem.Complete,
            idempotency_pb2.CompleteRequest(
                scope=scope,
                key=key,
                fencing_token=fencing_token,
                response=idempotency_pb2.StoredResponse(
                    status=response.status, body=response.body, headers=dict(response.headers)
                ),
            ),
        )
        return float(resp.expires_at.ToNanoseconds() / 1e9)

    async def abort(self, scope: str, key: str, fencing_token: int) -> None:
        """Release the key without a response, so the command may run again."""
        await self._call(
            self._idem.Abort,
            idempotency_pb2.AbortRequest(scope=scope, key=key, fencing_token=fencing_token),
        )

    async def once(
        self,
        scope: str,
        key: str,
        request: bytes,
        command: Callable[[int], Awaitable[StoredResponse]],
        *,
        kind: PayloadKind = PayloadKind.JSON,
        lease_s: float | None = None,
    ) -> OnceResult:
        """Run ``command(fencing_token)`` at most once per (scope, key) and return
        its response; a repeat returns the stored response without running it.

        The command reports its own failures in the response it returns (they
        are stored and replayed like successes). If it raises instead, the key
        is released and the exception propagates, so a retry runs it again.
        Raises IdempotencyInProgressError while another caller runs it, and
        IdempotencyMismatchError if the key was used for a different request.
        """
        begun = await self.begin(scope, key, request, kind=kind, lease_s=lease_s)
        if begun.outcome == "completed" and begun.response is not None:
            return OnceResult(begun.response, replayed=True)
        if begun.outcome == "in_progress":
            raise IdempotencyInProgressError(
                f"idempotency key {key!r} is being run by another caller; retry after its "
                f"lease (until {begun.lease_expires_at:.3f})"
            )
        if begun.outcome == "mismatch":
            raise IdempotencyMismatchError(
                f"idempotency key {key!r} was used with a different request "
                f"(fingerprint {begun.fingerprint})"
            )
        try:
            response = await command(begun.fencing_token)
        except BaseException:
            # If the abort fails too, the lease runs out on its own.
            with contextlib.suppress(MeridianError):
                await self.abort(scope, key, begun.fencing_token)
            raise
        await self.complete(scope, key, begun.fencing_token, response)
        return OnceResult(response, replayed=False)

    # -- events -----------------------------------------------------------

    async def publish(
        self,
        topic: str,
        key: str,
        payload: bytes,
        *,
        event_id: str,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bool]:
        """Publish an event; returns (sequence in this region's stream, duplicate)."""
        resp = await self._call(
            self._events.Publish,
            _publish_request(OutgoingEvent(topic, key, payload, event_id, headers)),
        )
        return int(resp.sequence), bool(resp.duplicate)

    async def publish_batch(self, events: list[OutgoingEvent]) -> list[tuple[int, bool]]:
        """Publish up to 1000 events in one call (all validated first; nothing is
        published if one is bad); returns (sequence, duplicate) per event, in order.
        On an error some may be stored: send the same batch again."""
        resp = await self._call(
            self._events.PublishBatch,
            events_pb2.PublishBatchRequest(events=[_publish_request(e) for e in events]),
        )
        return [(int(r.sequence), bool(r.duplicate)) for r in resp.results]

    def subscribe(
        self,
        group: str,
        *,
        topic_filter: str = "",
        keyspace: str = "",
        start_sequence: int | None = None,
        start_time: float | None = None,
        max_in_flight: int = 0,
        max_deliveries: int = 0,
        ack_wait_s: float | None = None,
    ) -> Subscription:
        """Join consumer group ``group`` of this region, for events of topics matching
        ``topic_filter`` or for the change feed of ``keyspace``. A new group starts
        with new events, or at ``start_sequence`` / ``start_time`` (epoch s)."""
        open_ = events_pb2.SubscribeOpen(
            group=group, max_in_flight=max_in_flight, max_deliveries=max_deliveries
        )
        _set_source(open_, topic_filter, keyspace)
        _start(open_.start, start_sequence, start_time)
        if ack_wait_s is not None:
            open_.ack_wait.FromNanoseconds(int(ack_wait_s * 1e9))
        return Subscription(self._events.Subscribe(), events_pb2.SubscribeRequest(open=open_))

    async def replay(
        self,
        group: str,
        *,
        topic_filter: str = "",
        keyspace: str = "",
        start_sequence: int | None = None,
        start_time: float | None = None,
    ) -> None:
        """Move ``group`` back (or forward) to a sequence or a time."""
        request = events_pb2.ReplayRequest(group=group)
        _set_source(request, topic_filter, keyspace)
        _start(request.start, start_sequence, start_time)
        await self._call(self._events.Replay, request)

    async def register_push(
        self,
        group: str,
        endpoint: str,
        *,
        topic_filter: str = "",
        keyspace: str = "",
        start_sequence: int | None = None,
        start_time: float | None = None,
        max_in_flight: int = 0,
        max_deliveries: int = 0,
        ack_wait_s: float | None = None,
    ) -> None:
        """Have this region's agent POST ``group``'s deliveries to ``endpoint``
        (2xx acks, anything else nacks)."""
        request = events_pb2.RegisterPushRequest(
            group=group,
            endpoint=endpoint,
            max_in_flight=max_in_flight,
            max_deliveries=max_deliveries,
        )
        _set_source(request, topic_filter, keyspace)
        _start(request.start, start_sequence, start_time)
        if ack_wait_s is not None:
            request.ack_wait.FromNanoseconds(int(ack_wait_s * 1e9))
        await self._call(self._events.RegisterPush, request)

    async def unregister_push(
        self, group: str, *, topic_filter: str = "", keyspace: str = ""
    ) -> None:
        request = events_pb2.UnregisterPushRequest(group=group)
        _set_source(request, topic_filter, keyspace)
        await self._call(self._events.UnregisterPush, request)

    async def invalidate(self, namespace: str, keys: list[str]) -> int:
        """Tell every region's subscribers of ``_invalidate.<namespace>`` to drop ``keys``."""
        resp = await self._call(
            self._events.Invalidate, events_pb2.InvalidateRequest(namespace=namespace, keys=keys)
        )
        return int(resp.sequence)

    # -- services and invocation -------------------------------------------

    async def register(
        self,
        service: str,
        endpoint: str,
        *,
        protocol: str = "http",
        instance_id: str = "",
        version: str = "",
        metadata: dict[str, str] | None = None,
        health_path: str = "/healthz",
        ttl_s: float = 10.0,
    ) -> str:
        """Register an instance with this agent; returns its instance id. Keep the
        lease with :meth:`heartbeat` every ``ttl_s / 3``."""
        inst = invocation_pb2.Instance(
            service=service,
            endpoint=endpoint,
            protocol=invocation_pb2.PROTOCOL_GRPC
            if protocol == "grpc"
            else invocation_pb2.PROTOCOL_HTTP,
            instance_id=instance_id,
            version=version,
            metadata=metadata or {},
            health_check=invocation_pb2.HealthCheck(http_path=health_path),
        )
        request = invocation_pb2.RegisterRequest(instance=inst)
        request.ttl.FromNanoseconds(int(ttl_s * 1e9))
        resp = await self._call(self._registry.Register, request)
        return str(resp.instance_id)

    async def heartbeat(self, instance_id: str) -> None:
        await self._call(
            self._registry.Heartbeat, invocation_pb2.HeartbeatRequest(instance_id=instance_id)
        )

    async def deregister(self, instance_id: str) -> None:
        await self._call(
            self._registry.Deregister, invocation_pb2.DeregisterRequest(instance_id=instance_id)
        )

    async def list_instances(
        self, service: str = "", region: str = ""
    ) -> list[invocation_pb2.InstanceStatus]:
        resp = await self._call(
            self._registry.ListInstances,
            invocation_pb2.ListInstancesRequest(service=service, region=region),
        )
        return list(resp.instances)

    async def invoke(
        self,
        service: str,
        method: str,
        body: bytes = b"",
        *,
        verb: str = "POST",
        headers: dict[str, str] | None = None,
        query: str = "",
    ) -> invocation_pb2.InvokeResponse:
        """Call an HTTP service through the agent (InvocationService.Invoke)."""
        request = invocation_pb2.InvokeRequest(
            service=service,
            method=method,
            http_verb=verb,
            query=query,
            headers=[invocation_pb2.Header(name=k, value=v) for k, v in (headers or {}).items()],
            body=body,
        )
        return await self._call(self._invocation.Invoke, request)

    async def aclose(self) -> None:
        await self.channels.close()

    async def __aenter__(self) -> MeridianClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _read_result(resp: state_pb2.GetResponse) -> ReadResult:
    return ReadResult(
        _entry(resp.entry), _SERVED[resp.served], resp.staleness_bound.ToNanoseconds() / 1e9
    )


def _put_request(
    keyspace: str, key: str, value: bytes, if_revision: int | None, supersedes: list[int] | None
) -> state_pb2.PutRequest:
    request = state_pb2.PutRequest(
        keyspace=keyspace, key=key, value=value, supersedes=supersedes or []
    )
    if if_revision is not None:
        request.if_revision = if_revision
    return request


def _publish_request(e: OutgoingEvent) -> events_pb2.PublishRequest:
    return events_pb2.PublishRequest(
        topic=e.topic, key=e.key, payload=e.payload, event_id=e.event_id, headers=e.headers or {}
    )
