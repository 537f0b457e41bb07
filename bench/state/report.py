"""The results: one row per figure and path, printed as tables and saved as JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.state.profile import ProfileSummary
from bench.state.stats import Summary


@dataclass
class Row:
    """One measured path. ``summary`` is in ``unit``; ``ratio`` is median / baseline median."""

    figure: str
    name: str
    unit: str
    summary: Summary | None = None
    baseline_name: str = ""
    baseline_median: float | None = None
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""
    cpu: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "name": self.name,
            "unit": self.unit,
            "summary": self.summary.to_json() if self.summary else None,
            "baseline": {"name": self.baseline_name, "median": self.baseline_median},
            "ratio": self.ratio,
            "goal": self.goal,
            "met": self.met,
            "note": self.note,
            "cpu": self.cpu,
            **self.extra,
        }


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    profiles: list[ProfileSummary] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            **self.meta,
            "rows": [r.to_json() for r in self.rows],
            "notes": self.notes,
            "errors": self.errors,
            "profiles": [p.__dict__ for p in self.profiles],
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, default=_jsonable) + "\n")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)


def host_info(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except OSError:
            return ""

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_files": len(git("status", "--porcelain", "--", "src").splitlines()),
        "loadavg_at_start": os.getloadavg(),
    }


# -- text ------------------------------------------------------------------------------


def _num(v: float | None, unit: str) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if unit == "ops/s":
        return f"{v:,.0f}"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def _table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r) for r in lines]
    return "\n".join(s.rstrip() for s in out)


def render(report: Report) -> str:
    lines = []
    for r in report.rows:
        s = r.summary
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        lines.append(
            [
                r.figure,
                r.name,
                f"{_num(s.median, r.unit)} {r.unit}" if s else r.note or "-",
                f"{_num(s.p10, r.unit)}..{_num(s.p90, r.unit)}" if s else "",
                f"{_num(s.min, r.unit)}..{_num(s.max, r.unit)}" if s else "",
                _num(s.p99, r.unit) if s and r.unit == "ms" else "",
                str(s.n) if s else "",
                f"{_num(r.baseline_median, r.unit)} ({r.baseline_name})" if r.baseline_name else "",
                f"{r.ratio:.2f}x" if r.ratio is not None else "",
                r.goal,
                met,
            ]
        )
    out = [
        _table(
            [
                "#",
                "measurement",
                "median",
                "p10..p90",
                "min..max",
                "p99",
                "n",
                "baseline",
                "ratio",
                "goal",
                "met",
            ],
            lines,
        )
    ]
    cpu_lines = []
    for r in report.rows:
        c = r.cpu
        if not c:
            continue
        procs = c.get("processes_cores", {})
        per_op = c.get("processes_cpu_us_per_op", {})
        cpu_lines.append(
            [
                r.figure,
                r.name,
                f"{c['wall_s']:.1f}",
                _cores(c.get("generator_cores"), c.get("generator_cpu_us_per_op")),
                _cores(procs.get("agent"), per_op.get("agent")),
                _cores(procs.get("agent-loop"), None),
                _cores(procs.get("nats"), per_op.get("nats")),
                _cores(procs.get("nats-global"), per_op.get("nats-global")),
                _cores(procs.get("wan"), per_op.get("wan")),
                _cores(procs.get("machine"), None),
            ]
        )
    if cpu_lines:
        out += [
            "",
            "CPU while measuring (cores busy = CPU s / wall s; µs of CPU per call):",
            _table(
                [
                    "#",
                    "measurement",
                    "wall s",
                    "load generator",
                    "agent",
                    "agent loop thread",
                    "nats (region)",
                    "nats (global, region)",
                    "WAN emulator",
                    f"machine (of {os.cpu_count()})",
                ],
                cpu_lines,
            ),
        ]
    extra = [f"  {r.figure} {r.name}: {r.note}" for r in report.rows if r.note and r.summary]
    if extra:
        out += ["", "Notes:", *extra]
    out += [f"  {n}" for n in report.notes]
    for p in report.profiles:
        out += ["", f"py-spy, agent during {p.label}: {p.samples} busy samples ({p.raw_path})"]
        out += [
            "  libraries on the stack: "
            + ", ".join(f"{lib} {share:.0%}" for lib, share in p.libraries.items())
        ]
        out += ["  own time (Handle._run / Thread.run: grpc's C core, unnamed):"]
        out += [f"    {share:5.1%}  {name}" for name, share in p.top_self]
        out += ["  inside (inclusive):"]
        out += [f"    {share:5.1%}  {name}" for name, share in p.top_inclusive]
    if report.errors:
        out += ["", "Errors:", *(f"  {e}" for e in report.errors)]
    return "\n".join(out)


def _cores(cores: float | None, us_per_op: float | None) -> str:
    if cores is None:
        return "-"
    return f"{cores:.2f}" + (f" ({us_per_op:,.0f} µs)" if us_per_op is not None else "")
