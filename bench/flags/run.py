"""What feature flags cost an agent and how fast a change reaches every region.

Issue text: "OFREP single evaluation through the agent p50 ≤ 0.5 ms added
over a bare HTTP round trip to the agent; bulk evaluation of 100 flags ≤ 2 ms
p50; a flag change is visible in every region within one-way WAN + 100 ms p99."

One sandbox (three regions, the default WAN matrix, mutual TLS), one run:

- Figure 1: from one keep-alive HTTPS session as ``service/bench``, call by
  call alternating, ``POST /ofrep/v1/evaluate/flags/{key}`` of a targeted flag
  (region ``if`` around a ``fractional`` split, a new ``targetingKey`` each
  call) and the baseline, ``GET /v1/health`` of the same agent (the cheapest
  call it serves: guard, span, metrics). Added = p50(OFREP) - p50(health), per
  round; goal: ≤ 0.5 ms.
- Figure 2: the bulk ``POST /ofrep/v1/evaluate/flags`` with 100 flags
  defined, alternating with the same baseline; goal: p50 ≤ 2 ms (the whole
  call) and, for context, what it adds over the baseline.
- Figure 3: a flag flipped through one region's agent (the writing region
  rotates), while every region's agent is polled over OFREP every 2 ms. The
  change is *made* when the `global` stream's leader commits it: the stored
  message's timestamp (when the leader proposed it; every process runs on
  this machine's clock) plus the round trip to its nearest follower (whose
  ack makes the quorum). It is *visible* in a region when that region's
  agent first serves the new value. Visible - made - one-way WAN from the
  leader's region to that region is what the agents add (the feed's
  delivery, applying it, the poll); goal: p99 ≤ 100 ms. For context, the same from the operator's request (which
  includes the audit record, the trip to the leader and the quorum).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import nats

from bench.common import RESULTS, drive, stamp, until
from bench.regional.sandbox import RegionalSandbox
from bench.state.latency import leader_region
from bench.state.report import Report, Row
from bench.state.stats import Summary
from meridian.flags.store import KEYSPACE as FLAGS_KEYSPACE
from meridian.security.pki import client_ssl, ensure_identity
from meridian.security.tls import TlsFiles, client_context

REGION = "us-east"
FLAGS_STREAM = f"KV_{FLAGS_KEYSPACE.bucket}"
TARGETED = {
    "state": "ENABLED",
    "variants": {"on": True, "off": False},
    "defaultVariant": "off",
    "targeting": {
        "if": [
            {"in": [{"var": "region"}, ["us-east", "eu-west"]]},
            {"fractional": [["on", 25], ["off", 75]]},
            "off",
        ]
    },
}


@dataclass(frozen=True)
class Settings:
    rounds: int = 5
    #: Single evaluations (and baseline calls) per round.
    calls: int = 1000
    #: Bulk evaluations (and baseline calls) per round.
    bulk_calls: int = 200
    #: Flags defined for the bulk figure.
    flags: int = 100
    #: Flag flips per round (figure 3).
    flips: int = 20
    poll_ms: float = 2.0
    warmup: int = 50


def _spread(xs: list[float], fmt: str = ".3f") -> str:
    xs = [x for x in xs if x == x]
    return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}..{max(xs):{fmt}})" if xs else "-"


class Agents:
    """HTTPS sessions to every region's agent: as the operator and as a service."""

    def __init__(self, sb: RegionalSandbox) -> None:
        self.sb = sb
        op = client_ssl(sb.config)
        assert op is not None
        svc = client_context(TlsFiles.in_folder(ensure_identity(sb.config, "service/bench")))
        self.op = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=op, limit=8))
        self.svc = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=svc, limit=32))

    def url(self, region: str, path: str) -> str:
        return f"{self.sb.region(region).http_url}{path}"

    async def close(self) -> None:
        await self.op.close()
        await self.svc.close()

    async def set_flag(self, region: str, key: str, definition: dict[str, Any]) -> None:
        body = {"key": key, "definition": json.dumps(definition)}
        async with self.op.post(self.url(region, "/v1/flags/set-flag"), json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"set-flag {key}: {r.status} {await r.text()}")

    async def ofrep(self, region: str, key: str, context: dict[str, Any]) -> Any:
        url = self.url(region, f"/ofrep/v1/evaluate/flags/{key}")
        async with self.svc.post(url, json={"context": context}) as r:
            return r.status, await r.json(content_type=None)

    async def bulk(self, region: str, context: dict[str, Any]) -> Any:
        url = self.url(region, "/ofrep/v1/evaluate/flags")
        async with self.svc.post(url, json={"context": context}) as r:
            return r.status, await r.json(content_type=None)

    async def health(self, region: str) -> int:
        async with self.svc.get(self.url(region, "/v1/health")) as r:
            await r.read()
            return r.status


async def _timed(call: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    got = await call
    return (time.perf_counter() - t0) * 1000, got


async def alternate(n: int, a: Any, b: Any, check_a: Any) -> tuple[list[float], list[float]]:
    """``n`` calls of each, one after the other, which goes first alternating."""
    xs: list[float] = []
    ys: list[float] = []
    for i in range(n):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            if which == 0:
                ms, got = await _timed(a(i))
                check_a(got)
                xs.append(ms)
            else:
                ms, status = await _timed(b())
                if status != 200:
                    raise RuntimeError(f"baseline answered {status}")
                ys.append(ms)
    return xs, ys


def _ok(got: Any) -> None:
    status, body = got
    if status != 200:
        raise RuntimeError(f"OFREP answered {status}: {body}")


def _epoch(at: datetime | str) -> float:
    """A JetStream timestamp (nats-py gives a datetime; RFC 3339 text otherwise)
    as seconds since the epoch."""
    if isinstance(at, str):
        head, _, frac = at.rstrip("Z").partition(".")
        return datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp() + (
            float(f"0.{frac}") if frac else 0.0
        )
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


async def flip_visibility(
    agents: Agents, s: Settings, writer: str, key: str, value: bool
) -> tuple[float, dict[str, float]]:
    """Flip ``key`` to ``value`` through ``writer``: when it was sent (epoch s)
    and when each region first served it."""
    regions = agents.sb.config.region_names
    seen: dict[str, float] = {}
    sent = time.time()

    async def poll(region: str) -> None:
        while True:
            status, body = await agents.ofrep(region, key, {})
            if status == 200 and body.get("value") is value:
                seen[region] = time.time()
                return
            await asyncio.sleep(s.poll_ms / 1000)

    definition = {
        "variants": {"on": True, "off": False},
        "defaultVariant": "on" if value else "off",
    }
    async with asyncio.timeout(30):
        await asyncio.gather(agents.set_flag(writer, key, definition), *(poll(r) for r in regions))
    return sent, seen


async def stored_at(sb: RegionalSandbox, key: str) -> tuple[float, str]:
    """When the leader stored ``key``'s last change (epoch s), and the leader's region."""
    nc = await nats.connect(sb.nats_url(REGION), tls=client_ssl(sb.config), allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)
        msg = await js.get_last_msg(FLAGS_STREAM, f"$KV.{FLAGS_KEYSPACE.bucket}.{key}")
        info = await js.stream_info(FLAGS_STREAM)
        leader = info.cluster.leader if info.cluster and info.cluster.leader else ""
        assert msg.time is not None
        return _epoch(msg.time), leader_region(leader)
    finally:
        await nc.close()


async def measure(sb: RegionalSandbox, report: Report, s: Settings) -> None:
    agents = Agents(sb)
    try:
        await until("the flags served", lambda: _ready(agents), 120)
        await agents.set_flag(REGION, "bench-targeted", TARGETED)
        for i in range(s.flags - 1):
            await agents.set_flag(REGION, f"bench-{i:03d}", {**TARGETED, "metadata": {"n": i}})
        await until(
            "100 flags in us-east",
            lambda: _count(agents, s.flags),
            60,
        )
        single, base1, bulk, base2 = [], [], [], []
        # Warm up connections and caches.
        for i in range(s.warmup):
            _ok(await agents.ofrep(REGION, "bench-targeted", {"targetingKey": f"w-{i}"}))
            await agents.health(REGION)
        for _ in range(s.rounds):
            xs, ys = await alternate(
                s.calls,
                lambda i: agents.ofrep(REGION, "bench-targeted", {"targetingKey": f"user-{i}"}),
                lambda: agents.health(REGION),
                _ok,
            )
            single.append(xs)
            base1.append(ys)
            xs, ys = await alternate(
                s.bulk_calls,
                lambda i: agents.bulk(REGION, {"targetingKey": f"user-{i}"}),
                lambda: agents.health(REGION),
                _ok,
            )
            bulk.append(xs)
            base2.append(ys)
        regions = sb.config.region_names
        excess: dict[str, list[float]] = {r: [] for r in regions}
        end_to_end: dict[str, list[float]] = {r: [] for r in regions}
        leaders: set[str] = set()
        n = 0
        for _ in range(s.rounds):
            for _ in range(s.flips):
                writer = regions[n % len(regions)]
                sent, seen = await flip_visibility(agents, s, writer, "bench-flip", n % 2 == 0)
                stored, leader = await stored_at(sb, "bench-flip")
                leaders.add(leader)
                known = leader in regions
                quorum_ms = (
                    min(sb.rtt_ms(leader, r) for r in regions if r != leader) if known else 0
                )
                for region, at in seen.items():
                    wan = sb.one_way_ms(leader, region) if known else 0.0
                    excess[region].append((at - stored) * 1000 - quorum_ms - wan)
                    end_to_end[region].append((at - sent) * 1000 - sb.one_way_ms(writer, region))
                n += 1
        report.notes.append(f"the _flags stream's leader during figure 3: {sorted(leaders)}")
        report.rows.extend(rows(single, base1, bulk, base2, excess, s))
        for region, xs in end_to_end.items():
            report.rows.append(
                Row("3", f"from the operator's request to visible in {region}, minus one-way "
                    "WAN writer to region", "ms", Summary.of(xs),
                    note="context: includes the audit record, the trip to the leader and the "
                         "quorum commit", extra={"samples": xs})
            )  # fmt: skip
    finally:
        await agents.close()


async def _ready(agents: Agents) -> bool:
    status, _ = await agents.ofrep(REGION, "no-such-flag", {})
    return bool(status == 404)


async def _count(agents: Agents, n: int) -> bool:
    status, body = await agents.bulk(REGION, {})
    return status == 200 and len(body["flags"]) >= n


def _p50s(rounds: list[list[float]]) -> list[float]:
    return [Summary.of(r).median for r in rounds]


def rows(
    single: list[list[float]],
    base1: list[list[float]],
    bulk: list[list[float]],
    base2: list[list[float]],
    excess: dict[str, list[float]],
    s: Settings,
) -> list[Row]:
    flat = lambda rs: [x for r in rs for x in r]  # noqa: E731
    added1 = [a - b for a, b in zip(_p50s(single), _p50s(base1), strict=True)]
    added2 = [a - b for a, b in zip(_p50s(bulk), _p50s(base2), strict=True)]
    sm, bm = Summary.of(flat(single)), Summary.of(flat(base1))
    km = Summary.of(flat(bulk))
    out = [
        Row("1", "OFREP single evaluation (us-east)", "ms", sm,
            baseline_name="GET /v1/health, same session", baseline_median=bm.median,
            ratio=sm.median / bm.median,
            note=f"{s.rounds} x {s.calls} calls, alternating; per-round p50 {_spread(_p50s(single))} ms"),
        Row("1", "added over the bare round trip, per round", "ms", Summary.of(added1),
            goal="p50 ≤ 0.5 ms", met=statistics.median(added1) <= 0.5,
            extra={"per_round": added1}),
        Row("2", f"OFREP bulk evaluation, {s.flags} flags (us-east)", "ms", km,
            baseline_name="GET /v1/health, same session",
            baseline_median=Summary.of(flat(base2)).median,
            ratio=km.median / Summary.of(flat(base2)).median, goal="p50 ≤ 2 ms",
            met=km.median <= 2.0,
            note=f"{s.rounds} x {s.bulk_calls} calls; per-round p50 {_spread(_p50s(bulk))} ms; "
                 f"added over the baseline per round {_spread(added2)} ms",
            extra={"added_per_round": added2}),
    ]  # fmt: skip
    for region, xs in excess.items():
        x = Summary.of(xs)
        out.append(
            Row("3", f"committed -> visible in {region}, minus one-way WAN leader to region", "ms",
                x, goal="p99 ≤ 100 ms", met=x.p99 <= 100.0,
                note=f"{len(xs)} flips, writer rotating over the regions; polled every "
                     f"{s.poll_ms:g} ms over OFREP",
                extra={"samples": xs})
        )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.flags", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-port", type=int, default=18500)
    p.add_argument("--rounds", type=int, default=Settings.rounds)
    p.add_argument("--calls", type=int, default=Settings.calls)
    p.add_argument("--quick", action="store_true", help="2 rounds, a fifth of the calls")
    p.add_argument("--keep-workdir", action="store_true")
    args = p.parse_args(argv)
    s = Settings(
        rounds=2 if args.quick else args.rounds,
        calls=200 if args.quick else args.calls,
        bulk_calls=40 if args.quick else Settings.bulk_calls,
        flips=6 if args.quick else Settings.flips,
    )

    async def run(sb: RegionalSandbox, report: Report) -> None:
        await measure(sb, report, s)

    out: Path = RESULTS / f"flags-{stamp()}.json"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return drive(
        base_port=args.base_port,
        out=out,
        settings=asdict(s),
        measure=run,
        keep_workdir=args.keep_workdir,
        sandbox=RegionalSandbox,
    )
