"""What mutual TLS costs, measured on one sandbox in one run.

The sandbox's agents are plaintext: they are the baseline. A second us-east
agent of the same tree runs with mutual TLS on ports of its own, against the
same NATS servers, with certificates from a CA made for the run; so the two
agents differ only in TLS.

Figure 1, invocation overhead with mTLS: open-loop 1 KiB POSTs at ``rate``/s
to one HTTP test service registered with the mTLS agent, alternating in rounds
between a direct plaintext call to the instance and the same call through the
mTLS agent (HTTPS with a client certificate, kept-alive connections). Per
round, the agent's p50 and p99 minus the direct ones; median and spread over
the rounds. Goals: at most 1.0 ms at p50 and 3 ms at p99.

Figure 2, the handshake, reported on its own: opening a new connection to the
mTLS agent's HTTP port (TCP and a TLS 1.3 handshake with a client
certificate) against a TCP connect to the plaintext agent's.

Figure 3, EVENTUAL Get throughput: closed-loop gRPC Gets of one key by the Go
load generator, alternating in rounds between the plaintext agent and the mTLS
agent; per round the mTLS rate over the plaintext one, median and spread.
Goal: at least 0.9.

Figure 4, strong writes with NATS TLS: a second sandbox of the same tree with
mutual TLS everywhere (agents, NATS client ports, routes and gateways) runs
beside the plaintext one, on ``--tls-base-port``. Closed-loop gRPC Puts to the
``global`` keyspace (each a quorum write across the WAN), alternating in rounds
between the two sandboxes' us-east agents; per round the TLS rate over the
plaintext one. Goal: at least 0.95. The TLS sandbox's WAN emulator terminates
and re-originates each route's and gateway's TLS in Python (sandbox/wan_tls.py),
a cost a real supercluster does not have, so the figure is a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.common import RESULTS, drive, stamp, until
from bench.invoke.run import PAYLOAD, Service, overhead_rounds
from bench.state import native
from bench.state.agent import READ_KEY, VALUE
from bench.state.report import Report, Row
from bench.state.sandbox import REGIONS, BenchSandbox
from bench.state.stats import Summary
from meridian.client import MeridianClient
from meridian.config import MeridianConfig, load_config
from meridian.security.pki import client_ssl, ensure_identity, ensure_sandbox
from meridian.security.tls import TlsFiles

SERVICE = "bench-tls"
REGION = "us-east"


@dataclass(frozen=True)
class Settings:
    figures: frozenset[str] = frozenset({"1", "2", "3", "4"})
    rate: float = 500.0
    duration_s: float = 8.0
    warmup_s: float = 2.0
    rounds: int = 5
    handshakes: int = 200
    concurrency: int = 32
    tls_base_port: int = 26000


class MtlsAgent:
    """A second us-east agent with mutual TLS, beside the sandbox's plaintext one."""

    def __init__(self, sb: BenchSandbox) -> None:
        port = sb.config.sandbox.base_port + 50
        self.grpc_port, self.http_port = port, port + 1
        text = sb.config_path.read_text().replace(
            'mode = "insecure"', 'mode = "mtls"\nca_dir = "ca"'
        )
        text = text.replace(
            f'name = "{REGION}"\n',
            f'name = "{REGION}"\ngrpc_port = {self.grpc_port}\nhttp_port = {self.http_port}\n',
        )
        self.config_path = sb.root / "mtls.toml"
        self.config_path.write_text(text)
        self.config: MeridianConfig = load_config(self.config_path, env={})
        ensure_sandbox(self.config)
        assert self.config.client_tls_dir is not None
        self.operator = TlsFiles.in_folder(self.config.client_tls_dir)
        self.service_tls = ensure_identity(self.config, f"service/{SERVICE}")
        self.log = (sb.root / "mtls-agent.log").open("wb")
        env = {k: v for k, v in os.environ.items() if k != "MERIDIAN_INSECURE"}
        argv = [sys.executable, "-m", "meridian.cli.main", "--config", str(self.config_path)]
        self.proc = subprocess.Popen(
            [*argv, "agent", "run", "--region", REGION],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=sb.root,
        )

    @property
    def http_url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def ssl(self) -> ssl.SSLContext:
        ctx = client_ssl(self.config)
        assert ctx is not None
        return ctx

    async def ready(self, keyspace: str) -> None:
        async with MeridianClient(self.grpc_address, tls=self.operator) as client:

            async def serves() -> bool:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the mTLS agent exited {self.proc.returncode}")
                try:
                    got = await client.get(keyspace, READ_KEY)
                except Exception:  # not up yet, whatever the reason
                    return False
                return got.entry.value == VALUE

            await until("the mTLS agent serves the read key", serves, 120)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# -- figure 1 ------------------------------------------------------------------


async def figure1(sb: BenchSandbox, agent: MtlsAgent, s: Settings) -> list[Row]:
    svc = Service(sb, SERVICE, REGION, agent_url=agent.http_url, tls_dir=agent.service_tls)
    via_agent = f"{agent.http_url}/v1/invoke/{SERVICE}/echo"
    direct = f"http://127.0.0.1:{svc.port}/echo"
    connector = aiohttp.TCPConnector(limit=200, ssl=agent.ssl())
    try:
        async with aiohttp.ClientSession(connector=connector) as session:

            async def reachable() -> bool:
                async with session.post(via_agent, data=PAYLOAD) as resp:
                    await resp.read()
                    return resp.status == 200

            await until("the service callable through the mTLS agent", reachable, 60)
            o = await overhead_rounds(
                session,
                direct,
                via_agent,
                rounds=s.rounds,
                rate=s.rate,
                warmup_s=s.warmup_s,
                duration_s=s.duration_s,
                agent_name="mTLS agent",
            )
    finally:
        svc.stop()
    added_p50, added_p99, errors = o.added_p50, o.added_p99, o.errors
    direct_all, agent_all = o.direct_ms, o.agent_ms
    p50, p99 = Summary.of(added_p50), Summary.of(added_p99)
    d, a = Summary.of(direct_all), Summary.of(agent_all)
    note = (
        f"{s.rounds} rounds of {s.duration_s:g} s at {s.rate:g}/s, 1 KiB POST, keep-alive; "
        f"all samples: direct p50 {d.median:.3f} ms p99 {d.p99:.3f} ms, through the mTLS "
        f"agent p50 {a.median:.3f} ms p99 {a.p99:.3f} ms; {errors} failed calls"
    )
    return [
        Row("1", "added latency at p50 (mTLS agent - direct plaintext, per round)", "ms", p50,
            baseline_name="direct", baseline_median=d.median, goal="≤ 1.0 ms",
            met=p50.median <= 1.0, note=note,
            extra={"per_round": added_p50, "direct_ms": d.to_json(), "agent_ms": a.to_json()}),
        Row("1", "added latency at p99 (mTLS agent - direct plaintext, per round)", "ms", p99,
            baseline_name="direct", baseline_median=d.p99, goal="≤ 3 ms",
            met=p99.median <= 3.0, extra={"per_round": added_p99}),
    ]  # fmt: skip


# -- figure 2 ------------------------------------------------------------------


async def _connect_ms(host: str, port: int, ctx: ssl.SSLContext | None) -> float:
    t0 = time.perf_counter()
    _, writer = await asyncio.open_connection(host, port, ssl=ctx)
    took = (time.perf_counter() - t0) * 1000
    writer.close()
    # The server may drop a connection that sent nothing.
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()
    return took


async def figure2(sb: BenchSandbox, agent: MtlsAgent, s: Settings) -> list[Row]:
    ctx = agent.ssl()
    plain_port = sb.region(REGION).http_port
    tls_ms: list[float] = []
    tcp_ms: list[float] = []
    for i in range(s.handshakes):
        pair = [("tls", agent.http_port, ctx), ("tcp", plain_port, None)]
        for name, port, c in pair if i % 2 == 0 else reversed(pair):
            (tls_ms if name == "tls" else tcp_ms).append(await _connect_ms("127.0.0.1", port, c))
    tls, tcp = Summary.of(tls_ms), Summary.of(tcp_ms)
    return [
        Row("2", "new connection: TCP + TLS 1.3 handshake with a client certificate", "ms", tls,
            baseline_name="TCP connect, plaintext agent", baseline_median=tcp.median,
            ratio=tls.median / tcp.median if tcp.median else None,
            note=f"{s.handshakes} connections each, alternating; paid once per connection "
                 "(the SDKs and the gateway keep theirs open)"),
    ]  # fmt: skip


# -- figure 3 ------------------------------------------------------------------


@dataclass
class Rounds:
    """Closed-loop load on a baseline and a measured target, alternating which
    goes first each round: per target its rates, p50s (ms) and CPU µs per op
    of each watched process; per round the measured rate over the baseline's."""

    rates: dict[str, list[float]]
    p50_ms: dict[str, list[float]]
    cpu_us: dict[str, dict[str, list[float]]]
    ratios: list[float]
    errors: int = 0

    def cpu_medians(self) -> dict[str, dict[str, int]]:
        return {
            name: {w: round(Summary.of(v).median) for w, v in per.items()}
            for name, per in self.cpu_us.items()
        }


async def alternate(
    binary: Path,
    targets: dict[str, tuple[str, Path | None, dict[str, int]]],
    s: Settings,
    *,
    mode: str,
    keyspace: str,
    key: Callable[[int], str],
    value: bytes = b"",
) -> Rounds:
    """``targets``: name -> (address, TLS folder or None, watched pids by label),
    the baseline first."""
    base, other = list(targets)
    out = Rounds({n: [] for n in targets}, {n: [] for n in targets}, {n: {} for n in targets}, [])
    for r in range(s.rounds):
        got: dict[str, float] = {}
        for name in [base, other] if r % 2 == 0 else [other, base]:
            target, tls_dir, pids = targets[name]
            res = await native.closed_loop(
                binary,
                name,
                mode=mode,
                target=target,
                keyspace=keyspace,
                key=key(r),
                value=value,
                concurrency=s.concurrency,
                connections=2,
                warmup_s=s.warmup_s,
                duration_s=s.duration_s,
                pids=pids,
                tls_dir=tls_dir,
            )
            if res.errors:
                out.errors += res.errors
                print(f"  {name}: {res.errors} errors, first: {res.first_error}", flush=True)
            got[name] = res.rate
            out.rates[name].append(res.rate)
            out.p50_ms[name].append(Summary.of([x * 1000 for x in res.latencies_s]).median)
            for w, used in res.cpu.processes.items():
                if used is not None and res.ops:
                    out.cpu_us[name].setdefault(w, []).append(used / res.ops * 1e6)
        out.ratios.append(got[other] / got[base])
        print(
            f"  round {r + 1}: {base} {got[base]:.0f}/s, {other} {got[other]:.0f}/s "
            f"(x{out.ratios[-1]:.3f})",
            flush=True,
        )
    return out


async def figure3(sb: BenchSandbox, agent: MtlsAgent, s: Settings) -> list[Row]:
    binary = await asyncio.to_thread(native.build, sb.root)
    targets = {
        "plaintext": (
            sb.region(REGION).grpc_address,
            None,
            {"agent": sb.pids()[f"agent:{REGION}"]},
        ),
        "mtls": (agent.grpc_address, agent.operator.cert.parent, {"agent": agent.proc.pid}),
    }
    got = await alternate(
        binary, targets, s, mode="grpc-get", keyspace=sb.keyspace.name, key=lambda _: READ_KEY
    )
    rates, ratios, errors = got.rates, got.ratios, got.errors
    agent_us = {n: per.get("agent", [0.0]) for n, per in got.cpu_us.items()}
    ratio = Summary.of(ratios)
    plain, mtls = Summary.of(rates["plaintext"]), Summary.of(rates["mtls"])
    return [
        Row("3", "EVENTUAL Get throughput, mTLS / plaintext agent (per round)", "x", ratio,
            baseline_name="plaintext agent", baseline_median=plain.median, goal="≥ 0.9",
            met=ratio.median >= 0.9,
            note=f"{s.rounds} rounds of {s.duration_s:g} s, {s.concurrency} callers on 2 gRPC "
                 f"connections (Go load generator); plaintext {plain.median:.0f}/s, mTLS "
                 f"{mtls.median:.0f}/s (medians); agent CPU per Get "
                 f"{Summary.of(agent_us['plaintext']).median:.0f} / "
                 f"{Summary.of(agent_us['mtls']).median:.0f} µs; {errors} errors",
            extra={"plaintext_per_s": rates["plaintext"], "mtls_per_s": rates["mtls"],
                   "agent_cpu_us_per_get": agent_us}),
    ]  # fmt: skip


# -- figure 4 ------------------------------------------------------------------


class TlsSandbox(BenchSandbox):
    """The bench sandbox with mutual TLS everywhere, on ports of its own."""

    def __init__(self, base_port: int) -> None:
        super().__init__(base_port)
        text = self.config_path.read_text().replace('mode = "insecure"', 'mode = "mtls"')
        self.config_path.write_text(text)
        self.config = load_config(self.config_path, env={})
        assert self.config.security.tls and self.config.client_tls_dir is not None
        self.operator = self.config.client_tls_dir


async def figure4(sb: BenchSandbox, s: Settings) -> list[Row]:
    tls = TlsSandbox(s.tls_base_port)
    print(f"  bringing up the TLS sandbox (config {tls.config_path}) ...", flush=True)
    await asyncio.to_thread(tls.up)
    try:
        binary = await asyncio.to_thread(native.build, sb.root)
        # CPU per write of the agent, the servers of the global cluster and the
        # WAN emulator (which terminates TLS on the TLS sandbox's links).
        watched = (f"agent:{REGION}", "wan", *(f"nats:global-{r}" for r in REGIONS))
        plain_pids, tls_pids = sb.pids(), tls.pids()
        targets = {
            "plaintext": (
                sb.region(REGION).grpc_address,
                None,
                {w: plain_pids[w] for w in watched},
            ),
            "tls": (
                tls.region(REGION).grpc_address,
                tls.operator,
                {w: tls_pids[w] for w in watched},
            ),
        }
        got = await alternate(
            binary,
            targets,
            s,
            mode="grpc-put",
            keyspace=sb.keyspace.name,
            key=lambda r: f"w{r}",
            value=b"v" * 64,
        )
    finally:
        problem = await asyncio.to_thread(tls.down)
        if problem:
            print(f"  the TLS sandbox: {problem}", flush=True)
    rates, p50, ratios, errors = got.rates, got.p50_ms, got.ratios, got.errors
    ratio = Summary.of(ratios)
    plain, secured = Summary.of(rates["plaintext"]), Summary.of(rates["tls"])
    cpu_us = got.cpu_medians()
    print(f"  CPU µs per write (medians): {cpu_us}", flush=True)
    return [
        Row("4", "strong Put throughput, TLS on every NATS link / plaintext (per round)", "x",
            ratio, baseline_name="plaintext sandbox", baseline_median=plain.median,
            goal="≥ 0.95", met=ratio.median >= 0.95,
            note=f"{s.rounds} rounds of {s.duration_s:g} s, {s.concurrency} callers on 2 gRPC "
                 f"connections to us-east, global keyspace (quorum writes); plaintext "
                 f"{plain.median:.0f}/s, TLS {secured.median:.0f}/s (medians); p50 "
                 f"{Summary.of(p50['plaintext']).median:.1f} / {Summary.of(p50['tls']).median:.1f}"
                 f" ms; {errors} errors",
            extra={"plaintext_per_s": rates["plaintext"], "tls_per_s": rates["tls"],
                   "plaintext_p50_ms": p50["plaintext"], "tls_p50_ms": p50["tls"],
                   "cpu_us_per_write": cpu_us}),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.security", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-port", type=int, default=29000)
    p.add_argument("--figures", default="1,2,3,4", help="comma-separated: 1, 2, 3, 4")
    p.add_argument("--tls-base-port", type=int, default=Settings.tls_base_port)
    p.add_argument("--rounds", type=int, default=Settings.rounds)
    p.add_argument("--rate", type=float, default=Settings.rate)
    p.add_argument("--duration", type=float, default=Settings.duration_s)
    p.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    p.add_argument("--nice", type=int, default=None)
    args = p.parse_args(argv)
    s = Settings(
        figures=frozenset(args.figures.split(",")),
        rate=args.rate,
        duration_s=3.0 if args.quick else args.duration,
        rounds=2 if args.quick else args.rounds,
        handshakes=50 if args.quick else Settings.handshakes,
        tls_base_port=args.tls_base_port,
    )

    async def measure(sb: BenchSandbox, report: Report) -> None:
        async with MeridianClient(sb.region(REGION).grpc_address) as plain:
            await plain.put(sb.keyspace.name, READ_KEY, VALUE)
        agent = MtlsAgent(sb)
        try:
            await agent.ready(sb.keyspace.name)
            if "1" in s.figures:
                print("figure 1: invocation overhead through the mTLS agent ...", flush=True)
                report.rows += await figure1(sb, agent, s)
            if "2" in s.figures:
                print("figure 2: the handshake ...", flush=True)
                report.rows += await figure2(sb, agent, s)
            if "3" in s.figures:
                print("figure 3: EVENTUAL Get throughput, mTLS against plaintext ...", flush=True)
                report.rows += await figure3(sb, agent, s)
        finally:
            agent.stop()
        if "4" in s.figures:
            print("figure 4: strong writes, TLS on every NATS link against plaintext ...")
            report.rows += await figure4(sb, s)

    out: Path = RESULTS / f"security-{stamp()}.json"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return drive(
        base_port=args.base_port, out=out, settings=s.__dict__, measure=measure, nice=args.nice
    )
