"""What the benchmark commands share: the run around the measurements (bring the
sandbox up, measure, tear it down, print and save the report) and a retry-until
helper for readiness checks.

The sandbox itself, the statistics and the report format live in ``bench.state``
(:mod:`bench.state.sandbox`, :mod:`bench.state.stats`, :mod:`bench.state.report`);
other benchmarks import them from there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import nats.errors

from bench.state.report import Report, host_info, render
from bench.state.sandbox import BenchSandbox, SandboxError
from meridian.core.errors import MeridianError

S = TypeVar("S", bound=BenchSandbox)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


async def until(what: str, attempt: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    """Call ``attempt`` every 0.5 s until it returns True; TimeoutError naming ``what``
    (and the last error) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        try:
            if await attempt():
                return
        except (MeridianError, OSError, nats.errors.Error) as exc:
            last = f" (last error: {type(exc).__name__}: {exc})"
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s:.0f}s{last}")
        await asyncio.sleep(0.5)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def drive(
    *,
    base_port: int,
    out: Path,
    settings: dict[str, Any],
    measure: Callable[[S, Report], Coroutine[Any, Any, None]],
    nice: int | None = None,
    keep_workdir: bool = False,
    sandbox: Callable[[int], S] = BenchSandbox,  # type: ignore[assignment]
) -> int:
    """Bring up a :class:`BenchSandbox` (or what ``sandbox`` makes of the port) on
    ``base_port``, run ``measure`` against it,
    tear it down (also on failure or Ctrl-C), print the report and save it to
    ``out``. Returns the exit status: 1 if anything failed."""
    signal.signal(signal.SIGTERM, _terminate)
    report = Report()
    report.meta.update(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        host=host_info(REPO),
        settings={k: sorted(v) if isinstance(v, frozenset) else v for k, v in settings.items()},
    )
    load_1m = os.getloadavg()[0]
    if load_1m > 0.5 * (os.cpu_count() or 1):
        report.notes.append(
            f"the machine was already busy before the run (1-min load average {load_1m:.1f} "
            f"on {os.cpu_count()} CPUs): other work competes for the cores, see the "
            "'machine' column; expect noisy figures"
        )
    if nice is not None:
        # Inherited by every process and thread started from here on: the sandbox (its
        # agents, nats-servers and WAN emulator) and the load generators.
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        report.meta["niceness"] = os.getpriority(os.PRIO_PROCESS, 0)
        report.notes.append(
            f"run at niceness {report.meta['niceness']} (--nice): the sandbox and the load "
            "generators were favoured over unrelated work on the machine"
        )
    sb = sandbox(base_port)
    report.meta["config_toml"] = sb.config_path.read_text()
    started = time.monotonic()
    failed = False
    try:
        print(f"bringing up the sandbox (config {sb.config_path}) ...", flush=True)
        sb.up()
        print(f"  up in {time.monotonic() - started:.1f}s", flush=True)
        asyncio.run(measure(sb, report))
    except (SandboxError, TimeoutError) as exc:
        report.errors.append(str(exc))
        failed = True
    except KeyboardInterrupt:
        report.errors.append("interrupted")
        failed = True
    finally:
        print("tearing the sandbox down ...", flush=True)
        problem = sb.down(keep_workdir=keep_workdir or failed)
        if problem:
            report.errors.append(problem)
        if keep_workdir or failed:
            report.notes.append(f"sandbox logs kept in {sb.root}")
    report.meta["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    report.meta["elapsed_s"] = round(time.monotonic() - started, 1)
    report.meta["loadavg_at_end"] = os.getloadavg()
    print()
    print(render(report))
    report.save(out)
    print(f"\nresults: {out}  ({report.meta['elapsed_s']} s)")
    return 1 if report.errors else 0
