"""Calls to this region's instances: HTTP with aiohttp, gRPC with grpc.aio, as raw bytes.

An attempt that could not connect raises :class:`~.calls.AttemptFailed` with
``not_sent`` set: the router may then try another instance, even for a
non-idempotent call, since this one never reached an instance.
"""

from __future__ import annotations

import time

import aiohttp
import grpc

from meridian.agent.calls import AttemptFailed, Call, Reply, clean_headers
from meridian.config.model import InvocationConfig
from meridian.core.errors import DeadlineExceededError
from meridian.core.registry import InstanceView
from meridian.core.resilience.deadline import outgoing_headers
from meridian.core.resilience.policy import ResiliencePolicy
from meridian.core.resilience.retry import attempt_deadline


class Upstream:
    """The agent's connections to its region's instances."""

    def __init__(self, region: str, config: InvocationConfig) -> None:
        self.region = region
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            # A proxy for many callers must not keep one caller's cookies for the
            # next (and a dummy jar costs nothing per request).
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        for channel in self._channels.values():
            await channel.close()

    async def forget(self, endpoint: str) -> None:
        """No instance is at ``endpoint`` any more: close the gRPC channel there
        (pooled HTTP connections to it close after their keep-alive)."""
        channel = self._channels.pop(endpoint, None)
        if channel is not None:
            await channel.close()

    def grpc_channels(self) -> list[str]:
        """The endpoints this agent holds a gRPC channel to."""
        return sorted(self._channels)

    async def call(
        self, call: Call, policy: ResiliencePolicy, deadline: float, view: InstanceView
    ) -> Reply:
        if call.protocol == "grpc":
            return await self._grpc(call, policy, deadline, view)
        return await self._http(call, policy, deadline, view)

    async def _http(
        self, call: Call, policy: ResiliencePolicy, deadline: float, view: InstanceView
    ) -> Reply:
        assert self._session is not None
        now = time.monotonic()
        until = attempt_deadline(policy.retry, now, deadline) or deadline
        url = f"http://{view.endpoint}/{call.route}"
        if call.query:
            url += f"?{call.query}"
        headers = list(call.headers)
        headers.extend(outgoing_headers(deadline, now, grpc=False).items())
        headers.append(("Host", view.endpoint))
        limit = self.config.max_body_bytes
        try:
            # aiohttp's own timeout (one timer), not asyncio.timeout around it (two).
            async with self._session.request(
                call.verb,
                url,
                data=call.body or None,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=until - now),
            ) as resp:
                # Read to the end (a partly read body would cost the pooled
                # connection), but no further than the limit.
                declared = resp.content_length
                if declared is not None and declared <= limit:
                    body = await resp.read()
                else:
                    buf = bytearray()
                    async for chunk in resp.content.iter_any():
                        buf += chunk
                        if len(buf) > limit:
                            break
                    body = bytes(buf)
                if len(body) > limit:
                    raise AttemptFailed(
                        f"instance {view.instance_id} answered more than {limit} bytes",
                        not_sent=False,
                        region=self.region,
                        instance_id=view.instance_id,
                    )
                return Reply(
                    body=body,
                    headers=clean_headers(list(resp.headers.items())),
                    status=resp.status,
                )
        except aiohttp.ClientConnectorError as exc:
            raise AttemptFailed(
                f"instance {view.instance_id} refused the connection ({exc.os_error})",
                not_sent=True,
                region=self.region,
                instance_id=view.instance_id,
            ) from None
        except TimeoutError:
            # The timer was set for ``until``; when that is the call's deadline it
            # is the deadline that passed (the loop's clock may fire a hair early).
            if until >= deadline or time.monotonic() >= deadline:
                raise DeadlineExceededError(
                    f"calling {call.service!r}: the deadline passed waiting for {view.instance_id}"
                ) from None
            raise AttemptFailed(
                f"instance {view.instance_id} did not answer within the per-try timeout",
                not_sent=False,
                region=self.region,
                instance_id=view.instance_id,
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise AttemptFailed(
                f"instance {view.instance_id} failed: {exc}",
                not_sent=False,
                region=self.region,
                instance_id=view.instance_id,
            ) from None

    def channel(self, endpoint: str) -> grpc.aio.Channel:
        """The one gRPC channel to ``endpoint`` (health checks and calls share it)."""
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = grpc.aio.insecure_channel(endpoint)
        return channel

    async def _grpc(
        self, call: Call, policy: ResiliencePolicy, deadline: float, view: InstanceView
    ) -> Reply:
        now = time.monotonic()
        until = attempt_deadline(policy.retry, now, deadline) or deadline
        if until <= now:
            raise DeadlineExceededError(f"calling {call.service!r}: the deadline passed")
        method = self.channel(view.endpoint).unary_unary(call.route)
        rpc = method(call.body, metadata=list(call.headers), timeout=until - now)
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
                raise AttemptFailed(
                    f"instance {view.instance_id} refused the connection ({details})",
                    not_sent=True,
                    region=self.region,
                    instance_id=view.instance_id,
                ) from None
            if code == "DEADLINE_EXCEEDED" and (until >= deadline or time.monotonic() >= deadline):
                raise DeadlineExceededError(
                    f"calling {call.service!r}: the deadline passed waiting for {view.instance_id}"
                ) from None
            md = [(k, str(v)) for k, v in (exc.trailing_metadata() or ())]
            return Reply(body=b"", headers=md, grpc_code=code, grpc_details=details)
        md = [(k, str(v)) for k, v in list(initial or ()) + list(trailing or ())]
        return Reply(body=body, headers=md, grpc_code="OK")
