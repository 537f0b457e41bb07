"""From what the shoppers were told and what the store holds, to the report's
figures and verdicts.

:func:`conclude` fills a :class:`~meridian.demo.report.Report` after a finished
run: the load, the orders by outcome, reads, latency per client region, the
failover and the heal, stock per SKU, and one :class:`~meridian.demo.report.Check`
per invariant (see :mod:`meridian.demo.audit` for what each one means).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from meridian.demo import audit, report, rotation
from meridian.demo.options import DemoOptions
from meridian.demo.report import Check, Report
from meridian.demo.shop import Shop

#: Every region's ``GET /readmodel`` at one moment (monotonic seconds).
Snapshot = tuple[float, dict[str, dict[str, Any]]]


def conclude(
    rep: Report,
    opts: DemoOptions,
    shop: Shop,
    state: audit.GlobalState,
    *,
    gateway_url: str,
    load_s: float,
    settled: int,
    converged: float | None,
    snapshots: list[Snapshot],
    renewals: Sequence[tuple[float, str]] | None = None,
) -> None:
    """Fill ``rep`` from the finished run; ``renewals`` are the certificates
    renewed during the load (None: the run had no TLS)."""
    requests = list(shop.orders.values())
    rep.load = {
        "seconds": round(load_s, 3),
        "clients": opts.clients_per_region * len(shop.regions),
        "clients_per_region": opts.clients_per_region,
        "gateway": gateway_url,
        "requests": len(shop.exchanges),
    }
    outcomes = Counter(r.outcome for r in requests)
    rejected = Counter(r.reason for r in requests if r.outcome == "rejected")
    unknown = Counter(r.last_error for r in requests if r.outcome in ("unknown", "pending"))
    rep.orders = {
        "requested": len(requests),
        "accepted": outcomes["accepted"],
        "rejected": dict(rejected),
        "unknown": sum(unknown.values()),
        "unknown_last_errors": dict(unknown),
        "settled": settled,
        "cancelled": sum(1 for r in requests if r.cancelled_at is not None),
        "cancels": dict(shop.cancels),
        "replays": {
            "sent": sum(r.replays for r in requests),
            "same_order": sum(r.replays_same for r in requests),
            "marked_replayed": sum(r.replays_marked for r in requests),
        },
        "by_region": {
            region: {
                "accepted": sum(
                    1 for r in requests if r.region == region and r.outcome == "accepted"
                ),
                "rejected": sum(
                    1 for r in requests if r.region == region and r.outcome == "rejected"
                ),
            }
            for region in shop.regions
        },
    }
    rep.reads = {
        "ok": dict(shop.reads.ok),
        "not_yet_visible": dict(shop.reads.not_yet_visible),
        "failed": dict(shop.reads.failed),
        "strong_anomalies": shop.reads.strong_anomalies[:20],
    }
    rep.latency = report.latency(shop.exchanges, shop.regions)
    if "killed_at_s" in rep.failover:
        rep.failover = report.failover(
            shop.exchanges, opts.kill_region, rep.failover["killed_at_s"]
        )
    if rep.heal:
        rep.heal["back_home_s"] = report.back_home(
            shop.exchanges, opts.kill_region, rep.heal["started_at_s"]
        )

    seeded = dict.fromkeys(opts.sku_names, opts.stock_per_sku)
    lines = audit.stock_lines(state, seeded)
    rep.stock = [s.to_json() for s in lines]
    oversell = sum(s.oversell for s in lines)
    dups = audit.duplicates(requests, state)
    lost = audit.lost_writes(requests, state)
    last = snapshots[-1][1] if snapshots else {}
    rep.invariants = {
        "accepted": outcomes["accepted"],
        "oversell": oversell,
        "duplicates": dups.count,
        "duplicate_keys": dups.keys[:20],
        "duplicate_stored": dups.stored[:20],
        "lost_writes": len(lost),
        "strong_read_anomalies": len(shop.reads.strong_anomalies),
        "failover_s": rep.failover.get("first_success_s"),
        "read_models_converged": converged is not None,
        "convergence_s": converged,
        "read_models": {r: model_summary(m) for r, m in last.items()},
        "stored_orders": len(state.orders),
    }
    sold = sum(s.sold for s in lines)
    checks: list[Check] = []
    if renewals is not None:
        rep.rotation = rotation.summary(
            renewals, shop.exchanges, rep.failover.get("killed_at_s"), opts.leaf_lifetime_s
        )
        checks.append(_rotation_check(rep.rotation))
    rep.checks = [
        Check(
            "orders accepted",
            outcomes["accepted"] > 0,
            f"{outcomes['accepted']} of {len(requests)} requested",
            outcomes["accepted"],
        ),
        Check(
            "oversell",
            oversell == 0 and not state.unreadable,
            f"{oversell} units: {sold} units sold in live orders, none beyond what "
            f"inventory took out of the {sum(seeded.values())} seeded"
            if oversell == 0
            else f"{oversell} units sold beyond stock: "
            + ", ".join(f"{s.sku} +{s.oversell}" for s in lines if s.oversell)
            + (f"; unreadable entries: {state.unreadable}" if state.unreadable else ""),
            oversell,
        ),
        Check(
            "duplicates",
            dups.count == 0,
            f"{dups.count}: each of {len(requests)} keys gave at most one order id, "
            f"and each request is stored at most once ({len(state.orders)} orders)"
            if dups.count == 0
            else f"{len(dups.keys)} key(s) with two orders {dups.keys[:5]}, "
            f"{len(dups.stored)} request(s) stored twice {dups.stored[:5]}",
            dups.count,
        ),
        Check(
            "acknowledged writes",
            not lost,
            "every acknowledged order and cancel is in the store"
            if not lost
            else f"{len(lost)} lost: {lost[:5]}",
            len(lost),
        ),
        Check(
            "strong reads",
            not shop.reads.strong_anomalies,
            f"{shop.reads.ok['strong']} strong reads, each saw every write acknowledged before it"
            if not shop.reads.strong_anomalies
            else f"{len(shop.reads.strong_anomalies)} stale: {shop.reads.strong_anomalies[:3]}",
            len(shop.reads.strong_anomalies),
        ),
        Check(
            "failover measured",
            rep.failover.get("first_success_s") is not None,
            f"{opts.kill_region}'s shoppers answered {rep.failover['first_success_s']:.2f} s "
            f"after the kill, by {rep.failover['served_by']}"
            if rep.failover.get("first_success_s") is not None
            else f"{opts.kill_region}'s shoppers were never answered after the kill",
            rep.failover.get("first_success_s"),
        ),
        Check(
            "read models converged",
            converged is not None,
            f"all {len(last)} regions equal the store's {len(state.orders)} orders "
            + (
                f"{converged:.1f} s after the last write was acknowledged"
                if converged > 0
                else "as soon as the last write was acknowledged"
            )
            if converged is not None
            else f"not within {opts.converge_timeout_s:g} s: store has {len(state.orders)}; "
            + ", ".join(f"{r} {model_summary(m)}" for r, m in last.items()),
            converged,
        ),
    ]
    rep.checks += checks


def agreed_since(snapshots: list[Snapshot], want: str) -> float | None:
    """The time of the first snapshot from which on every region's state hash is ``want``."""
    since = None
    for at, snap in snapshots:
        if snap and all(m.get("state_hash") == want for m in snap.values()):
            if since is None:
                since = at
        else:
            since = None
    return since


def model_summary(model: dict[str, Any]) -> str:
    if "error" in model and "count" not in model:
        return f"unreachable ({model['error']})"
    return f"{model.get('count')} orders {model.get('by_status', {})}"


def _rotation_check(r: dict[str, Any]) -> Check:
    """Rotation under load: certificates were renewed before the fault, and no
    request failed in that time (when nothing but rotation disturbed the run)."""
    ok = r["renewals_before_fault"] > 0 and r["failed_before_fault"] == 0
    if r["renewals_before_fault"] == 0:
        detail = "no certificate was renewed before the fault: rotation was not exercised"
    elif r["failed_before_fault"]:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["failed_errors"].items()))
        detail = (
            f"{r['failed_before_fault']} request(s) failed before the fault while "
            f"{r['renewals_before_fault']} certificates were renewed ({errors})"
        )
    else:
        detail = (
            f"{r['renewals_before_fault']} renewals of {r['identities_before_fault']} "
            f"certificates before the fault ({r['renewals']} in all, "
            f"{r['leaf_lifetime_s']:g} s leaves), no request failed before it"
        )
    return Check("certificate rotation", ok, detail, r["failed_before_fault"])
