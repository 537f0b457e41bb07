"""What authorization costs an agent per call (issue 16: <= 50 us p50).

Runs the code an agent runs for every call it authorizes: the route's guard
(``meridian.policy.guard.Guard.wrap``) around a handler, with the caller's
identity set as the transports set it, the request's rule, the principal,
the engine's cached decision and, on a miss, Cedar's evaluation. It measures
the CPU time of each guarded call minus that of the same call unguarded, in
the same run, over a stream of requests shaped like the demo's: the two
services and the gateway, reads and writes on many keys, publishes, invokes
and registrations, with a denial in every hundred calls, and one call in
ten by a tenant service whose policy decides by key prefix (a new key each
time: the decision cache misses, the engine evaluates the request's slice).

Two policy sets: the sandbox's (what the demo runs) and 1,000 policies (the
sandbox's plus 989 grants of other services to their own keyspaces, a tenth
of them by key prefix, so those actions are decided per key). Each set is
measured ``--runs`` times in fresh engines; the report gives the median of
the runs' p50 and p99 and their spread, and writes
``bench/results/policy-<UTC>.json``.

    uv run --frozen python -m bench.policy [--calls 20000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from bench.common import RESULTS, stamp
from meridian._pb.meridian.v1 import events_pb2, invocation_pb2, state_pb2
from meridian.core.calls import CALLER, Caller
from meridian.core.errors import PermissionDeniedError
from meridian.policy import Guard
from meridian.policy.engine import PolicyEngine, compile_policies

TD = "spiffe://meridian.local"
SANDBOX = resources.files("meridian.policy").joinpath("builtin/sandbox.cedar").read_text()


def thousand_policies() -> str:
    extra = []
    for i in range(1000 - compile_policies(SANDBOX).count):
        cond = f' when {{ context.key like "t{i}/*" }}' if i % 10 == 0 else ""
        extra.append(
            f'@id("svc-{i}") permit (principal == Service::"svc-{i}", '
            f'action in [Action::"state:read", Action::"state:write"], '
            f'resource == Keyspace::"ks-{i}"){cond};'
        )
    return SANDBOX + "\n" + "\n".join(extra) + "\n"


def workload(n: int, rng: random.Random) -> list[tuple[str, str, Any]]:
    """(identity, rpc, request) shaped like the demo's calls."""
    out: list[tuple[str, str, Any]] = []
    for i in range(n):
        order = f"o-{rng.randrange(100_000)}"
        sku = f"sku-{rng.randrange(500)}"
        pick = rng.random()
        if i % 100 == 99:  # a denial: inventory tries the orders keyspace
            out.append(
                (
                    "service/inventory",
                    "StateService/Put",
                    state_pb2.PutRequest(keyspace="orders", key=order),
                )
            )
        elif pick < 0.35:
            out.append(
                (
                    "service/orders",
                    "StateService/Get",
                    state_pb2.GetRequest(keyspace="orders", key=order),
                )
            )
        elif pick < 0.55:
            out.append(
                (
                    "service/orders",
                    "StateService/Put",
                    state_pb2.PutRequest(keyspace="orders", key=order),
                )
            )
        elif pick < 0.75:
            out.append(
                (
                    "service/inventory",
                    "StateService/Put",
                    state_pb2.PutRequest(keyspace="inventory", key=sku),
                )
            )
        elif pick < 0.85:
            out.append(
                (
                    "service/orders",
                    "EventService/Publish",
                    events_pb2.PublishRequest(topic="orders", key=order),
                )
            )
        elif pick < 0.95:
            # A tenant service of the 1,000-policy set on its own keyspace, by a
            # key its policy decides by prefix: every new key is a cache miss.
            t = rng.randrange(0, 990, 10)
            out.append(
                (
                    f"service/svc-{t}",
                    "StateService/Get",
                    state_pb2.GetRequest(keyspace=f"ks-{t}", key=f"t{t}/{rng.randrange(10**6)}"),
                )
            )
        elif pick < 0.98:
            out.append(
                (
                    "gateway",
                    "StateService/Get",
                    state_pb2.GetRequest(keyspace="orders", key=order),
                )
            )
        else:
            out.append(
                (
                    "service/inventory",
                    "RegistryService/ListInstances",
                    invocation_pb2.ListInstancesRequest(service="inventory"),
                )
            )
    return out


async def handler(request: Any) -> None:
    return None


def caller(spec: str) -> Caller:
    return Caller(identity=f"{TD}/{spec}")


async def measure(guard: Guard | None, calls: list[tuple[str, str, Any]]) -> list[float]:
    """CPU seconds of each call (its guard, if any, and the empty handler)."""
    wrapped: dict[str, Callable[[Any], Any]] = {}
    out: list[float] = []
    clock = time.thread_time
    for identity, rpc, request in calls:
        fn = wrapped.get(rpc)
        if fn is None:
            fn = guard.wrap(rpc, handler, client_streaming=False) if guard else handler
            wrapped[rpc] = fn
        token = CALLER.set(caller(identity))
        start = clock()
        with contextlib.suppress(PermissionDeniedError):
            await fn(request)
        out.append(clock() - start)
        CALLER.reset(token)
    return out


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sets = {"sandbox": SANDBOX, "1000 policies": thousand_policies()}
    report: dict[str, Any] = {"calls": args.calls, "runs": args.runs, "sets": {}}
    for name, text in sets.items():
        compiled = compile_policies(text, 1)
        p50s, p99s, means = [], [], []
        for r in range(args.runs):
            calls = workload(args.calls, random.Random(r))
            base = await measure(None, calls)
            engine = PolicyEngine(compiled, region="us-east", sample_permits=0.01)
            guarded = await measure(Guard(engine, region="us-east"), calls)
            added = [g - b for g, b in zip(guarded, base, strict=True)]
            p50s.append(pct(added, 0.5) * 1e6)
            p99s.append(pct(added, 0.99) * 1e6)
            means.append(statistics.fmean(added) * 1e6)
        report["sets"][name] = {
            "policies": compiled.count,
            "decided_by_key": sorted(compiled.by_key),
            "added_cpu_us_p50": {
                "median": statistics.median(p50s),
                "min": min(p50s),
                "max": max(p50s),
            },
            "added_cpu_us_p99": {
                "median": statistics.median(p99s),
                "min": min(p99s),
                "max": max(p99s),
            },
            "added_cpu_us_mean": {"median": statistics.median(means)},
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    # The decision log's denials would flood the terminal; they are measured, not shown.
    import logging

    logging.getLogger("meridian.policy").setLevel(logging.WARNING)
    report = asyncio.run(run(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"policy-{stamp()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'set':<15} {'policies':>8} {'p50 added CPU (us)':>28} {'p99 (us)':>22}")
    for name, row in report["sets"].items():
        p50, p99 = row["added_cpu_us_p50"], row["added_cpu_us_p99"]
        print(
            f"{name:<15} {row['policies']:>8} "
            f"{p50['median']:>10.1f} ({p50['min']:.1f}-{p50['max']:.1f}) "
            f"{p99['median']:>12.1f} ({p99['min']:.1f}-{p99['max']:.1f})"
        )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
