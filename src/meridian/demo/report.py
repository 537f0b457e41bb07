"""The demo's report: figures from the clients' records, verdicts from the audit.

:func:`latency`, :func:`failover` and :func:`back_home` are pure functions of the
recorded exchanges; :class:`Report` gathers them with the audit's checks and
renders the text the demo prints and the JSON ``--report-json`` writes.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meridian.demo.shop import Exchange


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0 < q <= 100), None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency(exchanges: Iterable[Exchange], regions: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per client region: answered and failed requests, p50/p99 of all answered requests
    and of order placements (first sends with their retries), in milliseconds."""
    out: dict[str, dict[str, Any]] = {}
    by_region: dict[str, list[Exchange]] = {r: [] for r in regions}
    for e in exchanges:
        by_region.setdefault(e.region, []).append(e)
    for region, items in by_region.items():
        answered = [e.latency_s * 1000 for e in items if e.served]
        placed = [e.latency_s * 1000 for e in items if e.served and e.op == "place"]
        out[region] = {
            "requests": len(items),
            "answered": len(answered),
            "failed": len(items) - len(answered),
            "p50_ms": _round(percentile(answered, 50)),
            "p99_ms": _round(percentile(answered, 99)),
            "place_p50_ms": _round(percentile(placed, 50)),
            "place_p99_ms": _round(percentile(placed, 99)),
        }
    return out


def failover(exchanges: Sequence[Exchange], region: str, killed_at: float) -> dict[str, Any]:
    """From the kill to the first answer a client of ``region`` got for a request sent
    after it; also the first accepted order, and the requests that failed in between."""
    after = sorted(
        (e for e in exchanges if e.region == region and e.started >= killed_at),
        key=lambda e: e.ended,
    )
    first = next((e for e in after if e.served), None)
    first_order = next(
        (e for e in after if e.status == 201 and e.op in ("place", "settle", "replay")), None
    )
    failed = [e for e in after if not e.served and (first is None or e.ended <= first.ended)]
    # The gateway's part: the first answer (any status) from another region's agent.
    rerouted = next((e for e in after if e.served_by and e.served_by != region), None)
    # The data layer's part: the first order accepted anywhere, once global writes resumed.
    resumed = min(
        (
            e.ended
            for e in exchanges
            if e.started >= killed_at and e.status == 201 and e.op in ("place", "settle")
        ),
        default=None,
    )
    return {
        "region": region,
        "killed_at_s": round(killed_at, 3),
        "first_success_s": None if first is None else round(first.ended - killed_at, 3),
        "served_by": None if first is None else first.served_by,
        "first_success_op": None if first is None else first.op,
        "first_order_s": None if first_order is None else round(first_order.ended - killed_at, 3),
        "rerouted_s": None if rerouted is None else round(rerouted.ended - killed_at, 3),
        "rerouted_to": None if rerouted is None else rerouted.served_by,
        "writes_resumed_s": None if resumed is None else round(resumed - killed_at, 3),
        "failed_before": len(failed),
        "failed_errors": dict(Counter(e.error or f"http_{e.status}" for e in failed)),
    }


def back_home(exchanges: Sequence[Exchange], region: str, since: float) -> float | None:
    """Seconds from ``since`` until ``region``'s clients were served by ``region`` again."""
    ends = [
        e.ended
        for e in exchanges
        if e.region == region and e.started >= since and e.served and e.served_by == region
    ]
    return None if not ends else round(min(ends) - since, 3)


def _round(v: float | None, digits: int = 1) -> float | None:
    return None if v is None else round(v, digits)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    value: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "value": self.value}


@dataclass
class Report:
    """Everything the run found; ``ok`` when every check held and nothing was left behind."""

    options: dict[str, Any]
    interrupted: bool = False
    error: str | None = None
    phases: list[dict[str, Any]] = field(default_factory=list)
    load: dict[str, Any] = field(default_factory=dict)
    orders: dict[str, Any] = field(default_factory=dict)
    reads: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    failover: dict[str, Any] = field(default_factory=dict)
    heal: dict[str, Any] = field(default_factory=dict)
    rotation: dict[str, Any] = field(default_factory=dict)
    rollout: dict[str, Any] = field(default_factory=dict)
    stock: list[dict[str, Any]] = field(default_factory=list)
    invariants: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    left_behind: dict[str, list[Any]] = field(default_factory=dict)
    look_next: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.interrupted
            and self.error is None
            and bool(self.checks)
            and all(c.ok for c in self.checks)
            and not any(self.left_behind.values())
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "interrupted": self.interrupted,
            "error": self.error,
            "options": self.options,
            "phases": self.phases,
            "load": self.load,
            "orders": self.orders,
            "reads": self.reads,
            "latency": self.latency,
            "failover": self.failover,
            "heal": self.heal,
            "rotation": self.rotation,
            "rollout": self.rollout,
            "stock": self.stock,
            "invariants": self.invariants,
            "checks": [c.to_json() for c in self.checks],
            "processes": self.processes,
            "left_behind": self.left_behind,
            "look_next": self.look_next,
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)

    def render(self) -> str:
        """The report as the demo prints it."""
        lines = ["", "== Meridian global shop: report"]
        if self.interrupted:
            lines.append("  interrupted: the run was stopped before it finished")
        if self.error:
            lines.append(f"  error: {self.error}")
        if self.load:
            ld = self.load
            lines.append(
                f"  load      {ld['seconds']:.1f} s, {ld['clients']} clients "
                f"({ld['clients_per_region']} per region) through the gateway {ld['gateway']}; "
                f"{ld['requests']} requests"
            )
        if self.orders:
            o = self.orders
            rejected = ", ".join(f"{k} {v}" for k, v in sorted(o["rejected"].items())) or "none"
            lines.append(
                f"  orders    {o['accepted']} accepted, {sum(o['rejected'].values())} rejected "
                f"({rejected}), {o['unknown']} without a definite answer"
            )
            lines.append(
                f"            {o['settled']} settled after the load by sending them again; "
                f"{o['cancelled']} cancelled"
            )
            rp = o["replays"]
            lines.append(
                f"            {rp['sent']} deliberate retries of an accepted key: "
                f"{rp['same_order']} answered with the same order "
                f"({rp['marked_replayed']} marked Idempotent-Replayed)"
            )
        if self.reads:
            r = self.reads
            per = ", ".join(f"{c} {n}" for c, n in r["ok"].items())
            lines.append(
                f"  reads     {sum(r['ok'].values())} ({per}); not yet visible (eventual/bounded, "
                f"another region) {sum(r['not_yet_visible'].values())}; failed {sum(r['failed'].values())}"
            )
        if self.latency:
            lines.append("  latency per client region (answered requests; order placement):")
            for region, lt in self.latency.items():
                lines.append(
                    f"    {region:<9} p50 {_ms(lt['p50_ms'])}  p99 {_ms(lt['p99_ms'])}   "
                    f"orders p50 {_ms(lt['place_p50_ms'])}  p99 {_ms(lt['place_p99_ms'])}   "
                    f"({lt['answered']} answered, {lt['failed']} failed)"
                )
        if "first_success_s" in self.failover:
            lines.extend(_failover_lines(self.failover))
        if self.heal:
            h = self.heal
            back = h.get("back_home_s")
            lines.append(
                f"  heal      {h['region']} brought back at +{h['started_at_s']:.1f} s, "
                f"ready (sandbox up + services healthy) in {h['ready_s']:.1f} s"
                + (
                    f"; its clients served by {h['region']} again {back:.1f} s after the heal began"
                    if back is not None
                    else ""
                )
            )
        if self.rotation:
            rt = self.rotation
            lines.append(
                f"  rotation  {rt['renewals']} certificate renewals of {rt['identities']} "
                f"identities during the load ({rt['leaf_lifetime_s']:g} s leaves, renewed at "
                f"half-life), {rt['renewals_before_fault']} before the fault; "
                f"{rt['failed_before_fault']} requests failed before the fault"
            )
        if self.rollout:
            lines.extend(_rollout_lines(self.rollout))
        if self.stock:
            lines.append("  stock     sku: seeded / sold (live orders) / available / reserved")
            for s in self.stock:
                lines.append(
                    f"            {s['sku']}: {s['seeded']} / {s['sold']} / {s['available']} / "
                    f"{s['reserved']}" + (f"  OVERSOLD {s['oversell']}" if s["oversell"] else "")
                )
        if self.checks:
            lines.append("  invariants")
            for c in self.checks:
                lines.append(f"    {'ok  ' if c.ok else 'FAIL'} {c.name:<22} {c.detail}")
        if self.left_behind:
            leftover = [f"{k}: {v}" for k, v in self.left_behind.items() if v]
            lines.append(
                "  cleanup   "
                + ("; ".join(leftover) if leftover else "no process or port left behind")
            )
        if self.look_next:
            lines.append("  where to look next")
            lines.extend(f"    {line}" for line in self.look_next)
        lines.append(f"== {'all invariants held' if self.ok else 'NOT OK'}")
        return "\n".join(lines)


_OPS = {
    "place": "an order",
    "settle": "an order",
    "replay": "a retried order",
    "read": "a read",
    "cancel": "a cancel",
}


def _failover_lines(f: dict[str, Any]) -> list[str]:
    head = f"  failover  {f['region']} killed at +{f['killed_at_s']:.1f} s"
    if f.get("first_success_s") is None:
        return [f"{head}; its clients got no answer afterwards"]
    errors = ", ".join(f"{k} {v}" for k, v in f.get("failed_errors", {}).items())
    lines = [
        f"{head}: its clients' first success {f['first_success_s']:.2f} s later "
        f"({_OPS.get(f.get('first_success_op') or '', 'a request')}, served by {f['served_by']}); "
        f"{f['failed_before']} request(s) failed before it" + (f" ({errors})" if errors else "")
    ]
    if f.get("rerouted_s") is not None:
        lines.append(
            f"            the gateway: first answer from {f['rerouted_to']} "
            f"{f['rerouted_s']:.2f} s after the kill"
        )
    if f.get("writes_resumed_s") is not None:
        lines.append(
            f"            global writes: first order accepted after the kill (any region) "
            f"{f['writes_resumed_s']:.2f} s later"
        )
    return lines


def _rollout_lines(r: dict[str, Any]) -> list[str]:
    def counts(by_region: dict[str, int]) -> str:
        return ", ".join(f"{k or '?'} {n}" for k, n in sorted(by_region.items())) or "none"

    return [
        f"  rollout   faulty v2 canary in {r['canary']}: {r['bad_phase']} "
        f"({r['bad_message']}); first bad answer at +{r['first_bad_answer_s']} s, "
        f"rolled back at +{r['rolled_back_s']} s: {r['rollback_after_s']} s later "
        f"(analysis every {r['interval_s']:g} s)",
        f"            answers by v2 while it ran (shoppers and {r.get('probes', 0)} probes): "
        f"{counts(r['v2_answers_during_faulty_rollout'])}; "
        f"consistency check {r['consistency']}: {r['consistency_detail']}",
        f"            good v2: {r['good_phase']} in every region after {r['good_took_s']} s; "
        f"answers by v2 since: {counts(r['v2_answers_during_good_rollout'])}",
    ]


def _ms(v: float | None) -> str:
    if v is None:
        return "    -"
    if v >= 1000:
        return f"{v / 1000:5.2f} s"
    return f"{v:4.0f} ms"
