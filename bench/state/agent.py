"""What every State API figure shares: the settings, the agent under measurement
(its pids, its readiness, the time inside its handlers) and the keys read."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.common import until as _until
from bench.state.sandbox import BenchSandbox
from bench.state.stats import CpuUsage, Target
from meridian.client import Eventual, MeridianClient, PutItem

READ_KEY = "read-key"
#: Distinct keys a GetMany call of figure 3 reads (its batch size is at most this).
MANY_READ_KEYS = 256
VALUE = b"v" * 100


@dataclass(frozen=True)
class Settings:
    region: str = "us-east"
    figures: frozenset[str] = frozenset({"1", "2", "3", "4", "5"})
    # figure 1
    get_rounds: int = 6
    get_per_round: int = 300
    get_round_budget_s: float = 3.0
    get_warmup_s: float = 1.0
    # figure 2
    put_samples: int = 30
    put_warmup: int = 3
    # figures 3 and 4
    warmup_s: float = 3.0
    duration_s: float = 10.0
    read_processes: int = 2
    read_tasks: int = 16
    write_concurrency: int = 64
    write_regions: tuple[str, ...] = ("us-east", "leader")
    #: Keys per GetMany call, writes per PutMany call (native load generator only).
    many_batch: int = 32
    put_many_batch: int = 16
    #: GetMany calls at once (PutMany keeps write_concurrency writes in flight).
    many_read_calls: int = 4
    #: "native": the Go load generator (bench/state/loadgen) drives the agent in
    #: figures 3 and 4; "python": the Python gRPC clients. The direct baselines are
    #: nats-py either way.
    load_client: str = "native"
    #: GOMAXPROCS of the native load generator.
    loadgen_procs: int = 1
    # figure 5
    lag_samples: int = 100
    lag_interval_s: float = 0.02


def watched(sb: BenchSandbox, region: str) -> dict[str, Target]:
    """Whose CPU is reported: the agent (and its event-loop thread, the main thread),
    the region's two nats-servers, and the WAN emulator."""
    pids = sb.pids()
    names = {
        "agent": f"agent:{region}",
        "nats": f"nats:{region}",
        "nats-global": f"nats:global-{region}",
        "wan": "wan",
    }
    out: dict[str, Target] = {short: pids[full] for short, full in names.items() if full in pids}
    agent = pids[names["agent"]]
    out["agent-loop"] = (agent, agent)
    return out


def agent_pid(sb: BenchSandbox, region: str) -> int:
    return sb.pids()[f"agent:{region}"]


async def wait_ready(sb: BenchSandbox, region: str, timeout_s: float = 180) -> int:
    """Every agent accepts a Put, and ``region``'s agent serves the read key EVENTUAL
    from a synced view. Returns the read key's revision."""
    ks = sb.keyspace.name
    for r in sb.config.region_names:
        async with MeridianClient(sb.region(r).grpc_address, timeout_s=5) as client:

            async def put(client: MeridianClient = client, r: str = r) -> bool:
                await client.put(ks, f"ready-{r}", b"1")
                return True

            await _until(f"agent {r} accepted no Put on {ks!r}", put, timeout_s)
    async with MeridianClient(sb.region(region).grpc_address, timeout_s=5) as client:
        # The keys GetMany reads (READ_KEY-0, -1, ...), written before READ_KEY so
        # that a view serving READ_KEY has them too.
        await client.put_many(
            [PutItem(ks, f"{READ_KEY}-{i}", VALUE) for i in range(MANY_READ_KEYS)]
        )
        revision = await client.put(ks, READ_KEY, VALUE)

        async def synced() -> bool:
            got = await client.get(ks, READ_KEY, consistency=Eventual())
            return got.served == "eventual" and got.entry.revision == revision

        await _until(f"agent {region} did not serve {READ_KEY!r} EVENTUAL", synced, timeout_s)
    return revision


async def handler_time(
    sb: BenchSandbox, region: str, method: str, transport: str = "grpc"
) -> tuple[float, float]:
    """(total seconds, calls) of StateService ``method`` over ``transport``, as the
    agent's own latency histogram counts them: the time inside the agent's handler."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sb.region(region).http_url}/metrics") as resp,
    ):
        text = await resp.text()
    total = calls = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "meridian_api_request_duration_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("method") != method or labels.get("transport") != transport:
                continue
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                calls += sample.value
    return total, calls


def handler_note(before: tuple[float, float], after: tuple[float, float]) -> str:
    calls = after[1] - before[1]
    if calls <= 0:
        return ""
    mean_ms = (after[0] - before[0]) / calls * 1000
    return f"; mean time inside the agent's handler {mean_ms:.2f} ms (warm-up included)"


def cpu_json(cpu: CpuUsage, ops: int) -> dict[str, object]:
    return cpu.to_json(ops)
