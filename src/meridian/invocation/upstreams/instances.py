"""Calls to this region's instances: HTTP over :mod:`.instance_http`, gRPC with grpc.aio,
as raw bytes.

An attempt that could not connect raises :class:`~.calls.AttemptFailed` with
``not_sent`` set: the router may then try another instance, even for a
non-idempotent call, since this one never reached an instance.
"""

from __future__ import annotations

import time

import grpc

from meridian.backbone.resolve import checked_addresses
from meridian.config.model import InvocationConfig
from meridian.core.endpoints import SANDBOX, EndpointPolicy
from meridian.core.errors import DeadlineExceededError
from meridian.invocation.calls import AttemptFailed, Call, Reply
from meridian.invocation.model import InstanceView, metadata_text, metadata_wire
from meridian.invocation.resilience.deadline import outgoing_headers
from meridian.invocation.resilience.policy import ResiliencePolicy
from meridian.invocation.resilience.retry import attempt_deadline
from meridian.invocation.upstreams.instance_http import (
    ConnectFailed,
    InstanceBroken,
    InstanceConnections,
)


class Upstream:
    """The agent's connections to its region's instances."""

    def __init__(
        self, region: str, config: InvocationConfig, endpoints: EndpointPolicy = SANDBOX
    ) -> None:
        """``endpoints``: the policy every address an endpoint resolves to must
        meet when the agent connects (backbone/resolve.py)."""
        self.region = region
        self.config = config
        self.endpoints = endpoints
        self._instances = InstanceConnections(keepalive_s=30.0, endpoints=endpoints)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _failed(self, view: InstanceView, what: str, *, not_sent: bool) -> AttemptFailed:
        return AttemptFailed(
            f"instance {view.instance_id} {what}",
            not_sent=not_sent,
            region=self.region,
            instance_id=view.instance_id,
        )

    async def close(self) -> None:
        self._instances.close()
        for channel in self._channels.values():
            await channel.close()

    async def forget(self, endpoint: str) -> None:
        """No instance is at ``endpoint`` any more: close the gRPC channel and
        the idle HTTP connections there."""
        self._instances.forget(endpoint)
        channel = self._channels.pop(endpoint, None)
        if channel is not None:
            await channel.close()

    def grpc_channels(self) -> list[str]:
        """The endpoints this agent holds a gRPC channel to."""
        return sorted(self._channels)

    async def call(
        self, call: Call, policy: ResiliencePolicy, deadline: float, view: InstanceView
    ) -> Reply:
        """One attempt, until the call's ``deadline`` or the per-try timeout."""
        now = time.monotonic()
        until = attempt_deadline(policy.retry, now, deadline) or deadline
        if until <= now:
            raise DeadlineExceededError(f"calling {call.service!r}: the deadline passed")
        if call.protocol == "grpc":
            return await self._grpc(call, deadline, view, now, until)
        return await self._http(call, deadline, view, now, until)

    async def _http(
        self, call: Call, deadline: float, view: InstanceView, now: float, until: float
    ) -> Reply:
        target = f"/{call.route}?{call.query}" if call.query else f"/{call.route}"
        headers = list(call.headers)
        headers.extend(outgoing_headers(deadline, now, grpc=False).items())
        try:
            resp = await self._instances.request(
                view.endpoint,
                call.verb,
                target,
                headers,
                call.body,
                timeout_s=until - now,
                max_body=self.config.max_body_bytes,
            )
        except ConnectFailed as exc:
            raise self._failed(view, f"refused the connection ({exc})", not_sent=True) from None
        except TimeoutError:
            # The timer was set for ``until``; when that is the call's deadline it
            # is the deadline that passed (the loop's clock may fire a hair early).
            if until >= deadline or time.monotonic() >= deadline:
                raise DeadlineExceededError(
                    f"calling {call.service!r}: the deadline passed waiting for {view.instance_id}"
                ) from None
            raise self._failed(
                view, "did not answer within the per-try timeout", not_sent=False
            ) from None
        except InstanceBroken as exc:
            raise self._failed(view, f"failed: {exc}", not_sent=False) from None
        return Reply(body=resp.body, headers=resp.headers, status=resp.status)

    async def channel(self, endpoint: str) -> grpc.aio.Channel:
        """The one gRPC channel to ``endpoint`` (health checks and calls share
        it), to the first address the endpoint resolved to when it was made;
        EndpointRefused when one of them is one the policy forbids."""
        channel = self._channels.get(endpoint)
        if channel is None:
            host, _, port = endpoint.rpartition(":")
            address = (await checked_addresses(host, int(port), self.endpoints))[0]
            target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            channel = self._channels.get(endpoint)  # another task may have made it meanwhile
            if channel is None:
                channel = self._channels[endpoint] = grpc.aio.insecure_channel(target)
        return channel

    async def _grpc(
        self, call: Call, deadline: float, view: InstanceView, now: float, until: float
    ) -> Reply:
        try:
            channel = await self.channel(view.endpoint)
        except OSError as exc:  # EndpointRefused, or the name does not resolve
            raise self._failed(view, f"cannot be dialled ({exc})", not_sent=True) from None
        method = channel.unary_unary(call.route)
        metadata = [(k, wire) for k, v in call.headers if (wire := metadata_wire(k, v)) is not None]
        rpc = method(call.body, metadata=metadata, timeout=until - now)
        try:
            body = await rpc
            initial = await rpc.initial_metadata()
            trailing = await rpc.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            details = exc.details() or ""
            if code == "UNAVAILABLE" and (
                "connect" in details.lower() or "refused" in details.lower()
            ):
                raise self._failed(
                    view, f"refused the connection ({details})", not_sent=True
                ) from None
            if code == "DEADLINE_EXCEEDED" and (until >= deadline or time.monotonic() >= deadline):
                raise DeadlineExceededError(
                    f"calling {call.service!r}: the deadline passed waiting for {view.instance_id}"
                ) from None
            md = [(k, metadata_text(k, v)) for k, v in (exc.trailing_metadata() or ())]
            return Reply(body=b"", headers=md, grpc_code=code, grpc_details=details)
        md = [(k, metadata_text(k, v)) for k, v in list(initial or ()) + list(trailing or ())]
        return Reply(body=body, headers=md, grpc_code="OK")
