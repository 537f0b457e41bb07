"""The rollout driver, in every agent; exactly one drives each rollout.

Every agent runs a :class:`RolloutController`. Each tick it looks at the
rollouts its view holds that are not over, and drives those whose lease is
its own or has run out. The lease is part of the rollout's status (driver,
``lease_until_ms``), and every status write is a CAS on the revision read,
so the lease fences: once another agent took a rollout over, the old
driver's next write fails and it stops. The routing weights are written
only after a status write succeeded, by CAS on the weights' own revision,
and are reconciled from the status on every tick: a driver killed between
the two writes leaves the next one (another agent, at the same step) to put
them right. A driver renews its lease by writing the status each tick.

The current region's traffic comes from its agents over NATS
(``mg.traffic.<region>``, every agent there answers with its per-version
counts; :mod:`.traffic`). Every transition (start, step, analysis, promote,
roll back, pause, abort, a change of driver) is recorded in the audit log as
``admin:rollouts`` on the service, by the driver's agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from meridian.backbone.connection import BackboneConnection
from meridian.backbone.lifecycle import Background
from meridian.backbone.topology import TRAFFIC_SUBJECT
from meridian.core.calls import CALLER, Caller
from meridian.core.errors import MeridianError
from meridian.policy.model import Access, AuditTrail
from meridian.rollouts import progress
from meridian.rollouts.store import RolloutsComponent, rollout_key
from meridian.rollouts.traffic import Snapshot, Traffic

log = logging.getLogger(__name__)

#: How often each agent looks at the rollouts.
TICK_S = 1.0
#: How long a driver's lease lasts without being renewed.
LEASE_S = 6.0
#: How long the region's agents' answers are gathered after the first.
GATHER_AFTER_FIRST_S = 0.25
GATHER_MAX_S = 1.5
MAX_SERVICE_BYTES = 64


def traffic_subject(region: str) -> str:
    return f"{TRAFFIC_SUBJECT}.{region}"


def now_ms() -> int:
    return int(time.time() * 1000)


class RolloutController(Background):
    """Drives rollouts and answers traffic questions; see the module docstring."""

    name = "rollout-controller"

    def __init__(
        self,
        conn: BackboneConnection,
        rollouts: RolloutsComponent,
        traffic: Traffic,
        *,
        region: str,
        agent_id: str,
        identity: str,
        trail: AuditTrail | None,
        ejected_now: Callable[[str], Mapping[str, int]] = lambda service: {},
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        super().__init__()
        self.conn = conn
        self.rollouts = rollouts
        self.traffic = traffic
        self.region = region
        self.agent_id = agent_id
        self.identity = identity
        self.trail = trail
        self.clock_ms = clock_ms
        #: service -> version -> its instances here ejected as outliers now.
        self.ejected_now = ejected_now
        self._sub: Subscription | None = None

    async def run(self) -> None:
        await self.conn.wait_connected()
        self._sub = await self.conn.nc.subscribe(
            traffic_subject(self.region), cb=self._on_traffic_question
        )
        self.serving()
        while True:
            await asyncio.sleep(TICK_S)
            if not self.rollouts.loaded:
                continue
            for _, rollout in self.rollouts.rollouts():
                if rollout.over:
                    continue
                service = str(rollout.plan.get("service", ""))
                try:
                    await self.drive(service)
                except MeridianError as exc:
                    log.info("rollout of %s: %s", service, exc.message)
                except Exception:
                    log.exception("rollout of %s: the driver failed this tick", service)

    async def closing(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()

    # -- traffic --------------------------------------------------------------

    async def _on_traffic_question(self, msg: Msg) -> None:
        service = msg.data.decode(errors="replace")[:MAX_SERVICE_BYTES]
        answer = {
            "agent": self.agent_id,
            "versions": self.traffic.snapshot(service, self.ejected_now(service)),
            # The weights this agent routes by now: a consistency check
            # counts from the moment every agent of the region switched.
            "weights": self.rollouts.weights(service, self.region),
        }
        with contextlib.suppress(nats.errors.Error):
            await msg.respond(json.dumps(answer).encode())

    async def region_traffic(
        self, service: str, region: str, *, switched_from: str = ""
    ) -> Snapshot | None:
        """Each of ``region``'s agents' counts for ``service``; None when
        none answered, or (``switched_from``) when one of them still routes
        some calls to that version."""
        nc = self.conn.nc
        inbox = nc.new_inbox()
        answers: dict[str, Any] = {}
        first, still = asyncio.Event(), asyncio.Event()

        async def collect(msg: Msg) -> None:
            try:
                doc = json.loads(msg.data)
                answers[str(doc["agent"])] = doc["versions"]
                if switched_from and (doc.get("weights") or {}).get(switched_from, 0) > 0:
                    still.set()
            except (ValueError, KeyError, TypeError, AttributeError):
                return
            first.set()

        sub = await nc.subscribe(inbox, cb=collect)
        try:
            await nc.publish(traffic_subject(region), service.encode(), reply=inbox)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GATHER_MAX_S):
                    await first.wait()
                    await asyncio.sleep(GATHER_AFTER_FIRST_S)
        except nats.errors.Error as exc:
            log.info("traffic of %s in %s: %s", service, region, exc)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if still.is_set():
            return None
        return dict(answers) or None

    # -- driving --------------------------------------------------------------

    async def drive(self, service: str) -> None:
        """One tick of ``service``'s rollout, if this agent may drive it."""
        held = self.rollouts.rollout(service)
        if held is None:
            return
        revision, r = held
        now = self.clock_ms()
        if r.driver != self.agent_id and r.lease_until_ms > now:
            return  # another agent drives it
        events_before = r.events_total
        if r.driver != self.agent_id:
            at = r.current()
            where = f"at {at.region} step {at.step}" if at else ""
            r.event(now, "driver", self.region, f"{self.agent_id} drives {where}".strip())
            r.driver = self.agent_id
        if r.phase == progress.PROGRESSING:
            current = r.current()
            snapshot = (
                await self.region_traffic(service, current.region) if current is not None else {}
            )
            progress.advance(r, self.clock_ms(), snapshot)
        if r.checking:
            back = [p.region for p in r.regions if p.state == progress.REVERTED]
            snaps = {}
            for region in back:
                snap = await self.region_traffic(
                    service, region, switched_from=str(r.plan.get("version", ""))
                )
                if snap is not None:
                    snaps[region] = snap
            progress.check_consistency(r, snaps)
        now = self.clock_ms()
        r.lease_until_ms = now + int(LEASE_S * 1000)
        r.updated_ms = now
        new_events = r.events_since(events_before)
        # Recorded before the status is stored: a transition not recorded is
        # not made (the audit write raising ends this tick).
        for event in new_events:
            await self.audit(service, event)
        await self.rollouts.write(rollout_key(service), r.to_json(), revision)
        await self.rollouts.reconcile(r)
        if r.over:
            await self.rollouts.keep_history(r)

    async def audit(self, service: str, event: dict[str, Any]) -> None:
        if self.trail is None:
            return
        token = CALLER.set(Caller(identity=self.identity))
        try:
            detail = {k: str(v)[:200] for k, v in event.items() if k != "at_ms" and v}
            await self.trail.admin(
                uuid.uuid4().hex, Access("admin:rollouts", "Service", service), detail
            )
        finally:
            CALLER.reset(token)
