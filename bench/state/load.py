"""Closed-loop load: N concurrent callers, each issuing its next call as soon as
the previous one returns. Calls are counted only inside a measuring window that
opens after a warm-up; the window is cut into 1 s slices whose rates give the
median and spread of the throughput.

Reads (figure 3) come from helper processes started with ``spawn``, so the
Python gRPC client does not cap what one agent can serve; writes (figure 4) come
from this process, where 64 calls in flight are far from its limits.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.state.stats import CpuMeter, CpuUsage, Target

SLICE_S = 1.0


@dataclass
class LoadResult:
    name: str
    concurrency: int
    duration_s: float
    ops: int = 0
    errors: int = 0
    slice_rates: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    cpu: CpuUsage = field(default_factory=CpuUsage)
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.ops / self.duration_s if self.duration_s else 0.0


def _rates(counts: Mapping[int, int], duration_s: float) -> list[float]:
    slices = int(duration_s // SLICE_S)
    return [counts.get(i, 0) / SLICE_S for i in range(slices)]


class _Window:
    """The measuring window, in ``time.monotonic()`` seconds (0 = not open yet)."""

    def __init__(self, shared: Any) -> None:
        self.shared = shared  # [start, end]: a multiprocessing array or a plain list

    def open(self, start: float, duration_s: float) -> None:
        self.shared[1] = start + duration_s  # end first: whoever sees a start sees its end
        self.shared[0] = start


async def _caller(
    op: Callable[[int], Awaitable[object]],
    window: Any,
    counts: Counter[int],
    latencies: list[float],
    errors: list[str],
) -> None:
    i = 0
    while True:
        t0 = time.monotonic()
        failed = ""
        try:
            await op(i)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed call is counted, then the load goes on
            failed = f"{type(exc).__name__}: {exc}"
        t1 = time.monotonic()
        i += 1
        start, end = window[0], window[1]
        if not start or t0 < start:
            if failed:
                await asyncio.sleep(0.01)
            continue
        if t1 >= end:
            return
        if failed:
            errors.append(failed)
            await asyncio.sleep(0.01)
            continue
        counts[int((t1 - start) // SLICE_S)] += 1
        latencies.append(t1 - t0)


async def closed_loop(
    name: str,
    make_op: Callable[[int], Callable[[int], Awaitable[object]]],
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    pids: Mapping[str, Target],
) -> LoadResult:
    """Run ``concurrency`` callers in this process; caller ``c`` calls ``make_op(c)(i)``."""
    window: list[float] = [0.0, 0.0]
    counts: Counter[int] = Counter()
    latencies: list[float] = []
    errors: list[str] = []
    tasks = [
        asyncio.create_task(_caller(make_op(c), window, counts, latencies, errors))
        for c in range(concurrency)
    ]
    meter = CpuMeter(pids)
    try:
        await asyncio.sleep(warmup_s)
        _Window(window).open(time.monotonic(), duration_s)
        meter.start()
        await asyncio.sleep(duration_s)
        usage = meter.stop()
        await asyncio.wait(tasks, timeout=30)  # callers finish their last call and stop
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    result = LoadResult(name, concurrency, duration_s, cpu=usage)
    result.ops = sum(counts.values())
    result.errors = len(errors)
    result.first_error = errors[0] if errors else ""
    result.slice_rates = _rates(counts, duration_s)
    result.latencies_s = latencies
    return result


# -- reads from helper processes ------------------------------------------------------


def _read_process(
    mode: str,
    target: str,
    keyspace: str,
    key: str,
    tasks: int,
    window: Any,
    ready: Any,
    results: Any,
) -> None:
    """Entry point of a helper process: ``tasks`` callers reading ``key`` on one connection."""
    try:
        load = _grpc_reads if mode == "grpc" else _nats_reads
        results.put(asyncio.run(load(target, keyspace, key, tasks, window, ready)))
    except BaseException as exc:
        ready.put(f"error: {type(exc).__name__}: {exc}")
        raise


async def _grpc_reads(
    target: str, keyspace: str, key: str, tasks: int, window: Any, ready: Any
) -> dict[str, Any]:
    """Get EVENTUAL from an agent."""
    # The generated stub, not MeridianClient: the same channel and wire, without
    # building result dataclasses, so more of the machine is left to the agent.
    import grpc

    from meridian._pb.meridian.v1 import state_pb2, state_pb2_grpc

    level = state_pb2.Consistency.LEVEL_EVENTUAL
    request = state_pb2.GetRequest(
        keyspace=keyspace, key=key, consistency=state_pb2.Consistency(level=level)
    )
    async with grpc.aio.insecure_channel(target) as channel:
        stub = state_pb2_grpc.StateServiceStub(channel)  # type: ignore[no-untyped-call]
        first = await stub.Get(request, timeout=10)
        if first.served != level:
            raise RuntimeError(f"the agent served {first.served}, not EVENTUAL")

        async def op(_: int) -> object:
            return await stub.Get(request, timeout=10)

        return await _run_callers(op, tasks, window, ready)


async def _nats_reads(
    target: str, bucket: str, key: str, tasks: int, window: Any, ready: Any
) -> dict[str, Any]:
    """A direct nats-py KV get of the bucket, from the same region's server."""
    import nats

    nc = await nats.connect(target, allow_reconnect=False)
    try:
        kv = await nc.jetstream().key_value(bucket)
        await kv.get(key)

        async def op(_: int) -> object:
            return await kv.get(key)

        return await _run_callers(op, tasks, window, ready)
    finally:
        await nc.close()


async def _run_callers(
    op: Callable[[int], Awaitable[object]], tasks: int, window: Any, ready: Any
) -> dict[str, Any]:
    ready.put(os.getpid())
    counts: Counter[int] = Counter()
    latencies: list[float] = []
    errors: list[str] = []
    cpu: list[float] = []

    async def cpu_marks() -> None:
        # The window lives in shared memory, written by the parent process: poll it.
        while not window[0]:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
        cpu.append(time.process_time())
        await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
        cpu.append(time.process_time())

    await asyncio.gather(
        cpu_marks(), *(_caller(op, window, counts, latencies, errors) for _ in range(tasks))
    )
    return {
        "counts": dict(counts),
        "latencies": latencies,
        "errors": errors[:1],
        "n_errors": len(errors),
        "cpu_s": cpu[1] - cpu[0] if len(cpu) == 2 else float("nan"),
    }


async def read_load_processes(
    name: str,
    *,
    mode: str,
    target: str,
    keyspace: str,
    key: str,
    processes: int,
    tasks: int,
    warmup_s: float,
    duration_s: float,
    pids: Mapping[str, Target],
) -> LoadResult:
    """Figure 3's load: ``processes`` helper processes x ``tasks`` callers each, reading
    through an agent (``mode="grpc"``, ``keyspace`` is its name) or straight from
    NATS (``mode="nats"``, ``keyspace`` is the bucket)."""
    ctx = mp.get_context("spawn")
    shared = ctx.Array("d", 2, lock=False)
    ready, results = ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_read_process,
            args=(mode, target, keyspace, key, tasks, shared, ready, results),
            daemon=True,
            name=f"bench-read-{i}",
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            msg = await asyncio.to_thread(ready.get, True, 60)
            if isinstance(msg, str):
                raise RuntimeError(f"a load process failed to start: {msg}")
        await asyncio.sleep(warmup_s)
        meter = CpuMeter(pids)
        start = time.monotonic() + 0.05
        _Window(shared).open(start, duration_s)
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        meter.start()
        await asyncio.sleep(max(0.0, start + duration_s - time.monotonic()))
        usage = meter.stop()
        parts = [await asyncio.to_thread(results.get, True, 60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    counts: Counter[int] = Counter()
    result = LoadResult(name, processes * tasks, duration_s, cpu=usage)
    for part in parts:
        counts.update({int(k): v for k, v in part["counts"].items()})
        result.latencies_s += part["latencies"]
        result.errors += part["n_errors"]
        result.first_error = result.first_error or (part["errors"] or [""])[0]
        result.cpu.generator_s += part["cpu_s"]
    result.ops = sum(counts.values())
    result.slice_rates = _rates(counts, duration_s)
    return result


def write_ops(
    put: Callable[[str], Awaitable[object]], prefix: str
) -> Callable[[int], Callable[[int], Awaitable[object]]]:
    """Caller ``c``'s op writes a key of its own on every call: ``<prefix>-<c>-<i>``."""

    def make(c: int) -> Callable[[int], Awaitable[object]]:
        async def op(i: int) -> object:
            return await put(f"{prefix}-{c}-{i}")

        return op

    return make
