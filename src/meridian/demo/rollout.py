"""The demo's rollouts, after the region kill and while the shoppers shop.

1. Every region's orders traffic is held on the stable version (weights
   ``1.0.0=100, 2.0.0=0``), then a **faulty** orders 2.0.0 (a Go build that
   fails a share of new orders before any side effect) starts beside it in
   every region, and a rollout of it starts canary-first in
   ``rollout_region``. Its analysis fails there; that region goes back to
   1.0.0 on its own, and the other regions never send 2.0.0 a call.
2. The faulty instances are replaced by a good 2.0.0, and a second rollout
   takes it through every region to ``Healthy``.

While both run, synthetic probes read placed orders through the gateway
from every region (the shoppers alone send too few requests to compare two
versions every few seconds); the faulty build fails reads of its share of
orders as well as new ones. What the report shows: the time from the first
bad answer of 2.0.0 (shoppers' or probes') to the rollback (the goal: at most two analysis intervals, plus the driver's tick),
the requests that 2.0.0 answered by region, the consistency check after the
rollback, and how long the good rollout took. That no order was lost or
answered twice across both switches is the run's own checks (orders,
reservations, duplicates, lost writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from meridian.config import MeridianConfig
from meridian.demo.binaries import orders_variant_binary
from meridian.demo.fleet import Fleet, Service
from meridian.demo.options import NEW_VERSION, STABLE_VERSION, DemoOptions
from meridian.demo.report import Check
from meridian.demo.shop import ORDERS, Shop
from meridian.security.pki import client_tls

#: The driver's tick (meridian.rollouts.controller.TICK_S) plus gathering the
#: region's numbers: what a rollback may take beyond the analysis intervals.
DRIVER_SLACK_S = 1.5
#: Synthetic probes per second per region while the rollouts run: reads of
#: placed orders through the gateway. The shoppers send a few requests a
#: second in all, too few to compare two versions every few seconds.
PROBES_PER_S = 8.0


@dataclass(frozen=True)
class Probe:
    region: str
    started: float
    ended: float
    status: int
    version: str
    instance_region: str


def build_variants(opts: DemoOptions) -> tuple[Path, Path]:
    """The faulty and the good orders 2.0.0, built if stale (Go's build cache
    makes this quick after the first)."""
    bad = orders_variant_binary(NEW_VERSION, opts.bad_fail_percent)
    good = orders_variant_binary(NEW_VERSION, 0)
    return bad, good


class RolloutError(Exception):
    """A rollout did not get where it had to (the run's error)."""


class DemoRollouts:
    """Runs both rollouts against one demo run's sandbox; see the module docstring."""

    def __init__(
        self,
        opts: DemoOptions,
        config: MeridianConfig,
        fleet: Fleet,
        shop: Shop,
        phase: Callable[[str, str], None],
        remember: Callable[[dict[str, Service]], None],
        binaries: tuple[Path, Path],
    ) -> None:
        self.opts = opts
        self.config = config
        self.fleet = fleet
        self.shop = shop
        self.phase = phase
        self.remember = remember
        self.bad_bin, self.good_bin = binaries
        self.tls = client_tls(config)
        #: Wall-clock seconds at the shop's time 0.
        self.wall0 = time.time() - shop.now()
        self.probes: list[Probe] = []

    # -- the agents' RolloutService ---------------------------------------------

    async def ask(self, path: str, body: dict[str, Any], region: str = "") -> tuple[int, Any]:
        agent = self.config.region(region) if region else self.config.regions[0]
        ssl = True if self.tls is None else self.tls.current()
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(f"{agent.http_url}{path}", json=body, ssl=ssl) as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    async def status(self) -> dict[str, Any]:
        code, got = await self.ask("/v1/rollouts/get-rollout", {"service": "orders"})
        if code != 200:
            raise RolloutError(f"get-rollout answered {code}: {got}")
        return dict(got["rollout"])

    async def until(
        self, done: Callable[[dict[str, Any]], bool], what: str, timeout_s: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                got = await self.status()
            except (aiohttp.ClientError, TimeoutError, RolloutError):
                got = {}
            if got and done(got):
                return got
            if time.monotonic() > deadline:
                raise RolloutError(f"{what} did not happen within {timeout_s:g} s: {got}")
            await asyncio.sleep(0.5)

    async def start(self, plan: dict[str, Any], timeout_s: float = 90.0) -> float:
        """Start ``plan``, retrying while it is refused (its 2.0.0 instances are
        not yet healthy everywhere); returns when it started (shop time)."""
        deadline = time.monotonic() + timeout_s
        while True:
            code, got = await self.ask("/v1/rollouts/start-rollout", {"plan": json.dumps(plan)})
            if code == 200:
                return self.shop.now()
            if time.monotonic() > deadline:
                raise RolloutError(f"the rollout plan was refused ({code}): {got}")
            await asyncio.sleep(1.0)

    # -- the probes -------------------------------------------------------------

    async def probe(self, region: str) -> None:
        """Read placed orders through the gateway from ``region``, steadily."""
        shop, rng = self.shop, random.Random(region)
        headers = {shop.hint_header: region, "Meridian-Timeout-Ms": "3000"}
        while True:
            ids = [r.order_id for r in shop.orders.values() if r.order_id]
            if ids:
                url = f"{shop.gateway_url}{ORDERS}/{rng.choice(ids)}?consistency=eventual"
                started = shop.now()
                status, version, where = 0, "", ""
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with shop.session.get(
                        url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
                    ) as resp:
                        await resp.read()
                        status = resp.status
                        version = resp.headers.get("Meridian-Version", "")
                        where = resp.headers.get("Meridian-Region", "")
                self.probes.append(Probe(region, started, shop.now(), status, version, where))
            await asyncio.sleep(1.0 / PROBES_PER_S)

    # -- the scenario -------------------------------------------------------------

    def plan(self) -> dict[str, Any]:
        interval = self.opts.analysis_interval_s
        canary = self.opts.rollout_region
        others = [r for r in self.opts.regions if r != canary]
        return {
            "service": "orders",
            "version": NEW_VERSION,
            "stable": STABLE_VERSION,
            "regions": [
                {"region": canary, "steps": [50, 100], "hold_s": 2 * interval},
                {"region": others[0], "steps": [50, 100], "hold_s": 2 * interval},
                *({"region": r, "steps": [100]} for r in others[1:]),
            ],
            # Two measurements a step; the shoppers send a few orders a second.
            "analysis": {"min_requests": 5, "count": 2},
        }

    async def hold_on_stable(self) -> None:
        weights = {STABLE_VERSION: 100, NEW_VERSION: 0}
        for region in self.opts.regions:
            body = {"service": "orders", "region": region, "weights": weights}
            code, got = await self.ask("/v1/rollouts/set-weights", body)
            if code != 200:
                raise RolloutError(f"set-weights answered {code}: {got}")
        deadline = time.monotonic() + 30
        for region in self.opts.regions:  # every agent routes by them before 2.0.0 starts
            while True:
                _, got = await self.ask("/v1/rollouts/get-weights", {"service": "orders"}, region)
                if len(got.get("regions", [])) == len(self.opts.regions):
                    break
                if time.monotonic() > deadline:
                    raise RolloutError(f"{region} did not see the weights: {got}")
                await asyncio.sleep(0.3)

    def start_v2(self, binary: Path) -> None:
        for region in self.opts.regions:
            svc = self.fleet.start_variant(region, binary)
            self.remember({svc.name: svc})

    async def run(self) -> dict[str, Any]:
        probes = [asyncio.create_task(self.probe(r)) for r in self.opts.regions]
        try:
            return await self._run()
        finally:
            for task in probes:
                task.cancel()
            await asyncio.gather(*probes, return_exceptions=True)

    async def _run(self) -> dict[str, Any]:
        opts = self.opts
        canary = opts.rollout_region
        self.phase("rollout", f"holding orders on {STABLE_VERSION}; a faulty {NEW_VERSION} "
                   f"(fails {opts.bad_fail_percent} % of new orders) starts beside it")  # fmt: skip
        await self.hold_on_stable()
        await asyncio.to_thread(self.start_v2, self.bad_bin)
        bad_started = await self.start(self.plan())
        self.phase("rollout", f"rolling out the faulty {NEW_VERSION}, canary first in {canary}")
        bad = await self.until(
            lambda s: s["phase"] != "Progressing", "the faulty rollout's end", timeout_s=120
        )
        bad_ended = self.shop.now()
        self.phase("rollout", f"faulty {NEW_VERSION}: {bad['phase']}: {bad.get('message', '')}")
        checked = await self.until(
            lambda s: s.get("consistency") != "running", "the consistency check", timeout_s=60
        )
        for region in opts.regions:
            await asyncio.to_thread(self.fleet.stop_variant, region)
        await asyncio.to_thread(self.start_v2, self.good_bin)
        good_started = await self.start(self.plan())
        self.phase("rollout", f"rolling out a good {NEW_VERSION} to every region")
        good = await self.until(
            lambda s: s["phase"] != "Progressing", "the good rollout's end", 240
        )
        good_ended = self.shop.now()
        self.phase(
            "rollout", f"good {NEW_VERSION}: {good['phase']} in {good_ended - good_started:.1f} s"
        )
        return self.summary(
            bad, checked, good, (bad_started, bad_ended), (good_started, good_ended)
        )

    def summary(
        self,
        bad: dict[str, Any],
        checked: dict[str, Any],
        good: dict[str, Any],
        bad_window: tuple[float, float],
        good_window: tuple[float, float],
    ) -> dict[str, Any]:
        canary = self.opts.rollout_region
        rolled_back = next((e for e in bad.get("events", []) if e["kind"] == "rolled-back"), None)
        rolled_back_s = int(rolled_back["atUnixMs"]) / 1000 - self.wall0 if rolled_back else None
        start, end = bad_window
        v2: list[Any] = [e for e in self.shop.exchanges if e.version == NEW_VERSION]
        v2 += [p for p in self.probes if p.version == NEW_VERSION]
        v2.sort(key=lambda e: e.started)
        first_bad = next((e.ended for e in v2 if start <= e.started and e.status >= 500), None)
        during_bad = Counter(e.instance_region for e in v2 if start <= e.started <= end)
        after = rolled_back_s + 2 * DRIVER_SLACK_S if rolled_back_s is not None else end
        canary_after = sum(
            1 for e in v2 if after <= e.started <= end and e.instance_region == canary
        )
        return {
            "canary": canary,
            "interval_s": self.opts.analysis_interval_s,
            "bad_phase": bad["phase"],
            "bad_message": bad.get("message", ""),
            "bad_regions": {r["region"]: r["state"] for r in bad.get("regions", [])},
            "first_bad_answer_s": _r(first_bad),
            "rolled_back_s": _r(rolled_back_s),
            "rollback_after_s": _r(
                rolled_back_s - first_bad
                if rolled_back_s is not None and first_bad is not None
                else None
            ),
            "v2_answers_during_faulty_rollout": dict(during_bad),
            "v2_answers_in_canary_after_rollback": canary_after,
            "consistency": checked.get("consistency", ""),
            "consistency_detail": checked.get("consistencyDetail", ""),
            "probes": len(self.probes),
            "probe_statuses": dict(Counter(str(p.status) for p in self.probes)),
            "good_phase": good["phase"],
            "good_took_s": _r(good_window[1] - good_window[0]),
            "v2_answers_during_good_rollout": dict(
                Counter(e.instance_region for e in v2 if good_window[0] <= e.started)
            ),
        }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def check(r: dict[str, Any]) -> Check:
    """The verdict on the rollouts: the faulty version rolled back in its canary
    region only, within two analysis intervals (plus the driver's tick) of its
    first bad answer, never answering elsewhere, the consistency check passed,
    and the good version reached every region."""
    canary = r["canary"]
    problems = []
    if r["bad_phase"] != "RolledBack":
        problems.append(f"the faulty rollout ended {r['bad_phase']}: {r['bad_message']}")
    others = {k: v for k, v in r["bad_regions"].items() if k != canary}
    if r["bad_regions"].get(canary) != "rolled-back" or any(
        v != "pending" for v in others.values()
    ):
        problems.append(f"regions after the faulty rollout: {r['bad_regions']}")
    elsewhere = {k: n for k, n in r["v2_answers_during_faulty_rollout"].items() if k != canary}
    if elsewhere:
        problems.append(f"the faulty version answered outside {canary}: {elsewhere}")
    if r["v2_answers_in_canary_after_rollback"]:
        problems.append(
            f"{r['v2_answers_in_canary_after_rollback']} answers by the faulty version in "
            f"{canary} after the rollback"
        )
    limit = 2 * r["interval_s"] + DRIVER_SLACK_S
    after = r["rollback_after_s"]
    if after is None or after > limit:
        problems.append(f"rolled back {after} s after the first bad answer (goal ≤ {limit:g} s)")
    if r["consistency"] != "passed":
        problems.append(f"consistency check {r['consistency']}: {r['consistency_detail']}")
    if r["good_phase"] != "Healthy":
        problems.append(f"the good rollout ended {r['good_phase']}")
    if problems:
        return Check("rollout", False, "; ".join(problems), len(problems))
    return Check(
        "rollout",
        True,
        f"faulty {NEW_VERSION} rolled back in {canary} {after:g} s after its first bad answer "
        f"(goal ≤ {limit:g} s: 2 intervals of {r['interval_s']:g} s + the driver's tick), "
        f"never answered elsewhere; consistency check passed; a good {NEW_VERSION} reached "
        f"every region in {r['good_took_s']:g} s",
    )
