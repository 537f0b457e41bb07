"""The native load generator (``bench/state/loadgen``, Go): closed-loop gRPC Get and
Put, HTTP/JSON Get and gRPC event Publish (``bench/events``) against one agent, at a fraction of the Python clients' CPU
per call, so that on a small machine the load generator leaves the cores to the
agent it measures. It reports its own CPU time; see ``loadgen/main.go`` for the
protocol. Built with the Go toolchain on first use; without Go, the benchmark falls
back to the Python load generators and says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from bench.state import load
from bench.state.stats import CpuMeter, Target

SOURCE = Path(__file__).resolve().parent / "loadgen"


class NativeUnavailable(RuntimeError):
    """The native load generator cannot be built here."""


def build(out_dir: Path | None = None) -> Path:
    """``go build`` the load generator (cached by Go); returns the binary."""
    go = shutil.which("go")
    if go is None:
        raise NativeUnavailable("no Go toolchain on PATH")
    out = (out_dir or Path(tempfile.gettempdir())) / "meridian-bench-loadgen"
    proc = subprocess.run(
        [go, "build", "-o", str(out), "."],
        cwd=SOURCE,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise NativeUnavailable(f"go build failed: {(proc.stdout + proc.stderr)[-500:]}")
    return out


async def closed_loop(
    binary: Path,
    name: str,
    *,
    mode: str,
    target: str,
    keyspace: str,
    key: str,
    value: bytes = b"",
    concurrency: int,
    connections: int,
    warmup_s: float,
    duration_s: float,
    pids: Mapping[str, Target],
    procs: int = 1,
    topic: str = "",
    batch: int = 0,
    tls_dir: Path | None = None,
) -> load.LoadResult:
    """Run the load generator: ``concurrency`` callers (``mode`` grpc-get, grpc-put,
    grpc-publish, grpc-publish-batch, grpc-publish-stream or http-get) for
    ``warmup_s``, then measure ``duration_s``. Its Go runtime gets ``procs`` OS
    threads for Go code (GOMAXPROCS). Publishes go to ``topic`` with event ids
    prefixed by ``key``; grpc-publish-batch sends ``batch`` events per call.
    ``tls_dir``: call an mTLS agent as that identity (gRPC modes)."""
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        f"-mode={mode}",
        f"-target={target}",
        f"-keyspace={keyspace}",
        f"-key={key}",
        f"-value={value.decode()}",
        f"-concurrency={concurrency}",
        f"-connections={connections}",
        *([f"-topic={topic}"] if topic else []),
        *([f"-batch={batch}"] if batch else []),
        *([f"-tls-dir={tls_dir}"] if tls_dir else []),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GOMAXPROCS": str(procs)},
        limit=256 << 20,  # the result is one JSON line with every latency in it
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        if line.strip() != b"ready":
            err = await proc.stderr.read()
            raise RuntimeError(f"the load generator did not start: {(line + err).decode()[-500:]}")
        await asyncio.sleep(warmup_s)
        meter = CpuMeter(pids)
        proc.stdin.write(b"start\n")
        await proc.stdin.drain()
        meter.start()
        await asyncio.sleep(duration_s)
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        out = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        part = json.loads(out)
        usage = meter.stop(extra_generator_s=part["cpu_s"])
        await asyncio.wait_for(proc.wait(), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), timeout=30)
    counts: Counter[int] = Counter({int(k): v for k, v in part["counts"].items()})
    result = load.LoadResult(name, concurrency, duration_s, cpu=usage)
    result.ops = sum(counts.values())
    result.slice_rates = load._rates(counts, duration_s)
    result.latencies_s = part["latencies"]
    result.errors = part["n_errors"]
    result.first_error = (part["errors"] or [""])[0]
    return result
