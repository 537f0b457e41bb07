"""Summaries of samples and the CPU time processes spend while they are taken.

Pure bookkeeping, no I/O except reading ``/proc/<pid>/stat`` for other processes'
CPU time (Linux only; elsewhere those figures are reported as missing).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of already sorted samples, linearly interpolated."""
    if not ordered:
        return float("nan")
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    """Median and spread of one series of samples, in the samples' unit."""

    n: int
    median: float
    p10: float
    p90: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        s = sorted(samples)
        if not s:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan, nan)
        return cls(
            n=len(s),
            median=percentile(s, 0.5),
            p10=percentile(s, 0.1),
            p90=percentile(s, 0.9),
            p99=percentile(s, 0.99),
            min=s[0],
            max=s[-1],
        )

    def scaled(self, factor: float) -> Summary:
        """The same summary in another unit (e.g. seconds → milliseconds)."""
        return Summary(
            self.n,
            *(v * factor for v in (self.median, self.p10, self.p90, self.p99, self.min, self.max)),
        )

    def to_json(self) -> dict[str, float]:
        return asdict(self)


#: A watched process (pid), or one thread of it (pid, tid).
Target = int | tuple[int, int]


def proc_cpu_s(target: Target) -> float | None:
    """User + system CPU seconds of a process or thread so far; None if it can't be read."""
    path = (
        f"/proc/{target}/stat"
        if isinstance(target, int)
        else "/proc/{}/task/{}/stat".format(*target)
    )
    try:
        with open(path, encoding="ascii") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS


def machine_busy_s() -> float | None:
    """CPU seconds all cores have spent busy (not idle or waiting for I/O) since boot."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    values = [int(v) for v in fields[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICKS


@dataclass
class CpuUsage:
    """CPU seconds spent over ``wall_s`` seconds: by this process (the load generator),
    by helper load-generator processes, and by each watched process."""

    wall_s: float = 0.0
    generator_s: float = 0.0
    processes: dict[str, float | None] = field(default_factory=dict)

    def add(self, other: CpuUsage) -> None:
        self.wall_s += other.wall_s
        self.generator_s += other.generator_s
        for name, s in other.processes.items():
            mine = self.processes.get(name, 0.0)
            self.processes[name] = None if mine is None or s is None else mine + s

    def to_json(self, ops: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "wall_s": round(self.wall_s, 3),
            "generator_cpu_s": round(self.generator_s, 3),
            "generator_cores": _ratio(self.generator_s, self.wall_s),
            "processes_cpu_s": {k: _round(v) for k, v in self.processes.items()},
            "processes_cores": {k: _ratio(v, self.wall_s) for k, v in self.processes.items()},
        }
        if ops:
            out["generator_cpu_us_per_op"] = round(self.generator_s / ops * 1e6, 1)
            out["processes_cpu_us_per_op"] = {
                k: None if v is None else round(v / ops * 1e6, 1) for k, v in self.processes.items()
            }
        return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _ratio(a: float | None, b: float) -> float | None:
    return None if a is None or b <= 0 else round(a / b, 3)


class CpuMeter:
    """Measures CPU time between ``start()`` and ``stop()``: this process's own
    (``time.process_time``, all threads), each watched process's or thread's, and the
    whole machine's busy time as ``machine`` (``/proc``), which shows whether other
    work competed for the cores."""

    def __init__(self, pids: Mapping[str, Target]) -> None:
        self.pids = dict(pids)
        self._wall = 0.0
        self._own = 0.0
        self._procs: dict[str, float | None] = {}

    def start(self) -> None:
        self._wall = time.monotonic()
        self._own = time.process_time()
        self._procs = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
        self._procs["machine"] = machine_busy_s()

    def stop(self, extra_generator_s: float = 0.0) -> CpuUsage:
        """The usage since ``start()``; ``extra_generator_s`` adds helper processes' CPU."""
        wall = time.monotonic() - self._wall
        own = time.process_time() - self._own
        procs: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            before, after = self._procs.get(name), proc_cpu_s(pid)
            procs[name] = None if before is None or after is None else after - before
        before_all, after_all = self._procs.get("machine"), machine_busy_s()
        procs["machine"] = (
            None if before_all is None or after_all is None else after_all - before_all
        )
        return CpuUsage(wall, own + extra_generator_s, procs)
