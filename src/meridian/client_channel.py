"""The Python client's gRPC channel, following its certificate files.

gRPC Python fixes a channel's client certificate when the channel is made
(there are no reloading channel credentials, unlike the server side), so a
long-lived client would keep presenting a certificate that expires. With TLS
files, :class:`FollowedChannel` looks at them at most once a second; when they
changed (a renewal, a new root in the bundle) and load as a matching pair, later
calls go through a new channel, which shakes hands with the new certificate.
Calls already running, watches and subscriptions included, keep their channel:
retired channels stay open until the client closes, except that beyond
``KEEP_RETIRED`` rotations the oldest is closed (after a grace for its calls).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from meridian._pb.meridian.v1 import (
    events_pb2_grpc,
    flags_pb2_grpc,
    idempotency_pb2_grpc,
    invocation_pb2_grpc,
    state_pb2_grpc,
)
from meridian.security.tls import FollowsFiles, TlsFiles, grpc_channel_credentials

#: How often the files are looked at (three stat calls).
CHECK_EVERY_S = 1.0
#: Retired channels kept open for the calls they carry.
KEEP_RETIRED = 4
#: How long the oldest retired channel's calls may still run once it is closed.
CLOSE_GRACE_S = 30.0


def _secure(target: str, options: list[tuple[str, Any]]) -> Callable[[TlsFiles], grpc.aio.Channel]:
    def build(files: TlsFiles) -> grpc.aio.Channel:
        # gRPC takes a key that does not match its certificate without a word
        # (a renewal caught half-way): load the pair first, and fail like a
        # bad file so FollowsFiles keeps the last good channel.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_cert_chain(files.cert, files.key)
        ctx.load_verify_locations(cafile=files.bundle)
        return grpc.aio.secure_channel(target, grpc_channel_credentials(files), options=options)

    return build


class Stubs:
    """The service stubs of one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.state = state_pb2_grpc.StateServiceStub(channel)  # type: ignore[no-untyped-call]
        self.idem = idempotency_pb2_grpc.IdempotencyServiceStub(channel)  # type: ignore[no-untyped-call]
        self.events = events_pb2_grpc.EventServiceStub(channel)  # type: ignore[no-untyped-call]
        self.registry = invocation_pb2_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        self.invocation = invocation_pb2_grpc.InvocationServiceStub(channel)  # type: ignore[no-untyped-call]
        self.flags = flags_pb2_grpc.FlagServiceStub(channel)  # type: ignore[no-untyped-call]


class FollowedChannel:
    """``current()`` is the channel for the next call; ``stubs()`` its stubs."""

    def __init__(
        self, target: str, options: Sequence[tuple[str, Any]], files: TlsFiles | None
    ) -> None:
        self.files = files
        self._follow = (
            None if files is None else FollowsFiles(files, _secure(target, list(options)))
        )
        self._channel = (
            grpc.aio.insecure_channel(target, options=list(options))
            if self._follow is None
            else self._follow.current()
        )
        self._checked = time.monotonic()
        self._stubs = Stubs(self._channel)
        self._retired: list[grpc.aio.Channel] = []
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def reloads(self) -> int:
        return 0 if self._follow is None else self._follow.reloads

    def current(self) -> grpc.aio.Channel:
        now = time.monotonic()
        if self._follow is None or now - self._checked < CHECK_EVERY_S:
            return self._channel
        self._checked = now
        channel = self._follow.current()
        if channel is not self._channel:
            self._retired.append(self._channel)
            self._channel = channel
            if len(self._retired) > KEEP_RETIRED:
                oldest = self._retired.pop(0)
                task = asyncio.get_running_loop().create_task(oldest.close(CLOSE_GRACE_S))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        return self._channel

    def stubs(self) -> Stubs:
        channel = self.current()
        if self._stubs.channel is not channel:
            self._stubs = Stubs(channel)
        return self._stubs

    async def close(self) -> None:
        for channel in [*self._retired, self._channel]:
            await channel.close()
        for task in list(self._closing):
            task.cancel()
        self._retired.clear()
