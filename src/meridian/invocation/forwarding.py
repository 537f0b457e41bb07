"""Calls across regions: forwarded over NATS to another region's agents.

A call failing over to region R is sent to ``mg.invoke.<R>`` (a queue group of
R's agents) as a ``ForwardedCall``; it crosses the same WAN as the data. R's
agent calls one of its own instances and answers with a ``ForwardedResult``;
it never forwards further.

NATS cannot tell a caller that the region holding its request died: the
answer just never comes. So the forwarder fails every call still waiting on a
region that is found gone (an idempotent call is then retried elsewhere by
the router): when the status monitor loses contact with it, or sooner, when a
call has waited longer than ``PROBE_AFTER_S`` and a ping to that region's
agents (the monitor's ping subject) finds no responder or no answer within a
few round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from meridian._pb.meridian.internal.v1 import forwarding_pb2 as fw
from meridian._pb.meridian.v1 import invocation_pb2 as pb
from meridian.backbone.connection import BackboneConnection
from meridian.backbone.probes import describe_nats_error, ping_subject
from meridian.backbone.topology import FORWARD_SUBJECT
from meridian.core.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    MeridianError,
    ResourceExhaustedError,
)
from meridian.invocation.calls import AttemptFailed, Call, NoRoute, Reply
from meridian.invocation.model import grpc_violations, http_violations
from meridian.invocation.resilience.deadline import resolve_deadline
from meridian.invocation.resilience.policy import ResiliencePolicy
from meridian.invocation.resilience.retry import attempt_deadline

log = logging.getLogger(__name__)

FORWARD_QUEUE = "mg-invoke"
#: How often the forwarder looks for regions the status monitor lost contact with.
LOST_REGION_CHECK_S = 0.1
#: A call waiting this long on a region gets that region pinged.
PROBE_AFTER_S = 0.25
#: The ping's timeout: this many measured round trips (plus PROBE_SLACK_S).
PROBE_RTTS = 3.0
PROBE_SLACK_S = 0.1

#: Serves a call forwarded to this region: (call, deadline) -> reply.
ServeLocally = Callable[[Call, float], Awaitable[Reply]]


def forward_subject(region: str) -> str:
    return f"{FORWARD_SUBJECT}.{region}"


class PeerForwarder:
    """Sends calls to other regions' agents, and serves theirs."""

    def __init__(
        self,
        conn: BackboneConnection,
        *,
        region: str,
        peer_rtts: Callable[[], Mapping[str, float | None]],
        policy_for: Callable[[Call], ResiliencePolicy],
        serve_locally: ServeLocally,
        max_body: int,
    ) -> None:
        self.conn = conn
        #: invocation.max_body_bytes: the limit a forwarded call is checked against.
        self.max_body = max_body
        self.region = region
        self.peer_rtts = peer_rtts
        self.policy_for = policy_for
        self.serve_locally = serve_locally
        self._served: set[asyncio.Task[None]] = set()
        #: Forwarded calls waiting for an answer, by region.
        self._forwards: dict[str, dict[asyncio.Task[Msg], float]] = {}
        self._probing: set[str] = set()
        self._probes: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None
        #: Set once forwarded calls are taken (subscribed to this region's subject).
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        """Serve forwarded calls once NATS is up (nats-py keeps the subscription
        across reconnects), and abandon calls to regions found lost."""
        await self.conn.wait_connected()
        self._sub = await self.conn.nc.subscribe(
            forward_subject(self.region), queue=FORWARD_QUEUE, cb=self._on_forwarded
        )
        self.subscribed.set()
        reachable: dict[str, bool] = {}
        while True:
            await asyncio.sleep(LOST_REGION_CHECK_S)
            rtts = self.peer_rtts()
            for region, rtt in rtts.items():
                if rtt is None and reachable.get(region, True):
                    self._abandon(region, "the status monitor lost contact with it")
                reachable[region] = rtt is not None
            now = time.monotonic()
            for region, waiting in self._forwards.items():
                if (
                    waiting
                    and region not in self._probing
                    and now - min(waiting.values()) > PROBE_AFTER_S
                ):
                    self._probing.add(region)
                    probe = asyncio.create_task(self._probe(region, rtts.get(region)))
                    self._probes.add(probe)
                    probe.add_done_callback(self._probes.discard)

    async def _probe(self, region: str, rtt_s: float | None) -> None:
        """Ping ``region``'s agents; abandon the calls waiting on it if none answers."""
        timeout = PROBE_RTTS * (rtt_s or PROBE_AFTER_S) + PROBE_SLACK_S
        try:
            await self.conn.nc.request(ping_subject(region), b"", timeout=timeout)
        except (nats.errors.Error, TimeoutError) as exc:
            self._abandon(region, f"a ping found {describe_nats_error(exc)}")
        finally:
            self._probing.discard(region)

    async def stop(self, grace_s: float) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        for probe in self._probes:
            probe.cancel()
        if self._served:
            await asyncio.wait(self._served, timeout=grace_s)

    def _abandon(self, region: str, why: str) -> None:
        """Fail every forwarded call still waiting on ``region``."""
        waiting = self._forwards.pop(region, {})
        if waiting:
            log.info("abandoning %d call(s) forwarded to %s: %s", len(waiting), region, why)
        for task in waiting:
            task.cancel(why)

    async def forward(
        self, region: str, call: Call, policy: ResiliencePolicy, deadline: float
    ) -> Reply:
        now = time.monotonic()
        until = attempt_deadline(policy.retry, now, deadline) or deadline
        left = until - now
        if left <= 0:
            raise DeadlineExceededError(f"calling {call.service!r}: the deadline passed")
        fc = fw.ForwardedCall(origin_region=self.region, timeout_ms=max(1, int(left * 1000)))
        headers = [pb.Header(name=k, value=v) for k, v in call.headers]
        if call.protocol == "grpc":
            fc.grpc.CopyFrom(
                fw.GrpcCall(
                    service=call.service,
                    full_method=call.route,
                    metadata=headers,
                    request=call.body,
                )
            )
        else:
            fc.http.CopyFrom(
                pb.InvokeRequest(
                    service=call.service,
                    method=call.route,
                    http_verb=call.verb,
                    query=call.query,
                    headers=headers,
                    body=call.body,
                )
            )
        payload = fc.SerializeToString()
        if len(payload) > self.conn.nc.max_payload:
            raise AttemptFailed(
                f"the call is too large to forward to {region} "
                f"({len(payload)} bytes; NATS max_payload is {self.conn.nc.max_payload})",
                not_sent=True,
                region=region,
            )
        request = asyncio.ensure_future(
            self.conn.nc.request(forward_subject(region), payload, timeout=left)
        )
        waiting = self._forwards.setdefault(region, {})
        waiting[request] = time.monotonic()
        try:
            msg = await request
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            raise AttemptFailed(
                f"lost contact with {region} while waiting for its answer",
                not_sent=False,
                region=region,
            ) from None
        except nats.errors.NoRespondersError:
            raise AttemptFailed(
                f"no agent of {region} answers", not_sent=True, region=region
            ) from None
        except (nats.errors.TimeoutError, TimeoutError):
            if until >= deadline or time.monotonic() >= deadline:
                raise DeadlineExceededError(
                    f"calling {call.service!r}: the deadline passed waiting for {region}"
                ) from None
            raise AttemptFailed(
                f"{region}'s agent did not answer in time", not_sent=False, region=region
            ) from None
        except nats.errors.Error as exc:
            raise AttemptFailed(
                f"cannot reach {region}: {exc}", not_sent=True, region=region
            ) from None
        finally:
            waiting.pop(request, None)
        result = fw.ForwardedResult.FromString(msg.data)
        which = result.WhichOneof("result")
        if which == "error":
            err = result.error
            if err.code == "DEADLINE_EXCEEDED":
                raise DeadlineExceededError(f"{region}: {err.message}")
            raise AttemptFailed(f"{region}: {err.message}", not_sent=err.not_sent, region=region)
        if which == "grpc":
            g = result.grpc
            return Reply(
                body=g.response,
                headers=[(h.name, h.value) for h in g.metadata],
                grpc_code=g.code,
                grpc_details=g.details,
                region=g.region,
                instance_id=g.instance_id,
                version=g.version,
            )
        h = result.http
        return Reply(
            body=h.body,
            headers=[(x.name, x.value) for x in h.headers],
            status=h.status,
            region=h.region,
            instance_id=h.instance_id,
            version=h.version,
        )

    async def _on_forwarded(self, msg: Msg) -> None:
        # nats-py runs a subscription's callbacks one at a time: serve each call
        # in its own task so a slow instance does not hold up the others.
        task = asyncio.create_task(self._serve_forwarded(msg))
        self._served.add(task)
        task.add_done_callback(self._served.discard)

    async def _serve_forwarded(self, msg: Msg) -> None:
        result = fw.ForwardedResult()
        try:
            fc = fw.ForwardedCall.FromString(msg.data)
            # Checked again here, as if the call had come in at this agent: a
            # forwarded call is only as good as the peer that sent it.
            if fc.WhichOneof("call") == "grpc":
                g = fc.grpc
                metadata = [(h.name, h.value) for h in g.metadata]
                bad = grpc_violations(
                    service=g.service,
                    full_method=g.full_method,
                    body_bytes=len(g.request),
                    max_body=self.max_body,
                    metadata=metadata,
                )
                if bad:
                    raise InvalidArgumentError(bad)
                call = Call(
                    service=g.service,
                    route=g.full_method,
                    protocol="grpc",
                    body=g.request,
                    headers=tuple((h.name, h.value) for h in g.metadata),
                )
            else:
                r = fc.http
                bad = http_violations(
                    service=r.service,
                    method=r.method,
                    verb=r.http_verb or "POST",
                    query=r.query,
                    headers=[(h.name, h.value) for h in r.headers],
                    body_bytes=len(r.body),
                    max_body=self.max_body,
                )
                if bad:
                    raise InvalidArgumentError(bad)
                call = Call(
                    service=r.service,
                    route=r.method,
                    protocol="http",
                    body=r.body,
                    headers=tuple((h.name, h.value) for h in r.headers),
                    verb=r.http_verb or "POST",
                    query=r.query,
                )
            policy = self.policy_for(call)
            deadline = resolve_deadline(
                time.monotonic(),
                policy.timeout,
                remaining_s=fc.timeout_ms / 1000 if fc.timeout_ms else None,
            )
            reply = await self.serve_locally(call, deadline)
            if call.protocol == "grpc":
                result.grpc.CopyFrom(
                    fw.GrpcResult(
                        code=reply.grpc_code,
                        details=reply.grpc_details,
                        response=reply.body,
                        metadata=[pb.Header(name=k, value=v) for k, v in reply.headers],
                        region=reply.region,
                        instance_id=reply.instance_id,
                        version=reply.version,
                    )
                )
            else:
                result.http.CopyFrom(
                    pb.InvokeResponse(
                        status=reply.status,
                        headers=[pb.Header(name=k, value=v) for k, v in reply.headers],
                        body=reply.body,
                        region=reply.region,
                        instance_id=reply.instance_id,
                        version=reply.version,
                    )
                )
        except AttemptFailed as failed:
            result.error.CopyFrom(
                fw.ForwardError(code="UNAVAILABLE", message=failed.reason, not_sent=failed.not_sent)
            )
        except NoRoute as exc:
            result.error.CopyFrom(
                fw.ForwardError(code="UNAVAILABLE", message=str(exc), not_sent=True)
            )
        except ResourceExhaustedError as exc:
            result.error.CopyFrom(
                fw.ForwardError(code=exc.code.value, message=exc.message, not_sent=True)
            )
        except MeridianError as exc:
            result.error.CopyFrom(fw.ForwardError(code=exc.code.value, message=exc.message))
        except Exception as exc:
            log.exception("serving a forwarded call failed")
            result.error.CopyFrom(fw.ForwardError(code="INTERNAL", message=str(exc)[:500]))
        try:
            await msg.respond(result.SerializeToString())
        except nats.errors.Error as exc:
            log.info("cannot answer a forwarded call: %s", exc)
