"""From what the shoppers were told and what the store holds, to the report's
figures and verdicts.

:func:`conclude` fills a :class:`~meridian.demo.report.Report` after a finished
run: the load, the orders by outcome, reads, latency per client region, the
failover and the heal, stock per SKU, and one :class:`~meridian.demo.report.Check`
per invariant (see :mod:`meridian.demo.audit` for what each one means).

:func:`reservation_audit` adds one invariant of inventory's own: what the shoppers
were told agrees with the reservations, order by order, and the stock taken adds
up to the reservations, SKU by SKU (see :class:`ReservationAudit`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meridian.demo import audit, report, rotation
from meridian.demo.options import DemoOptions
from meridian.demo.report import Check, Report
from meridian.demo.shop import OrderRequest, Shop

#: The orders example's idempotency scope (``idempotencyScope`` in
#: sdk/go/examples/orders/orders.go), part of every order id it derives.
ORDERS_SCOPE = "orders"
#: Reservation states of an order whose stock inventory took (``released``: then gave
#: it back). Not ``refused`` (none taken) nor ``pending`` (still being made).
MADE = ("held", "confirmed", "released")

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
    reserved = reservation_audit(requests, state, seeded)
    last = snapshots[-1][1] if snapshots else {}
    rep.invariants = {
        "accepted": outcomes["accepted"],
        "oversell": oversell,
        "duplicates": dups.count,
        "duplicate_keys": dups.keys[:20],
        "duplicate_stored": dups.stored[:20],
        "lost_writes": len(lost),
        "reservation_anomalies": reserved.count,
        "refused_but_reserved": reserved.refused_but_reserved[:20],
        "sold_unreserved": reserved.sold_unreserved[:20],
        "stray_reservations": reserved.stray[:20],
        "stock_unaccounted": reserved.unaccounted[:20],
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
        reservations_check(reserved, len(state.reservations)),
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


def order_id(key: str) -> str:
    """The order id the orders example derives from an Idempotency-Key (``orderID`` in
    sdk/go/examples/orders/orders.go): every attempt of one request, whatever it was
    answered, reserves under this id."""
    digest = hashlib.sha256(f"{ORDERS_SCOPE}\x00{key}".encode()).digest()
    return "o-" + digest[:10].hex()


@dataclass(frozen=True)
class ReservationAudit:
    """Where inventory's reservations disagree with what the shoppers were told, or with
    the stock. Each list names the culprits; empty lists are a clean run.

    Inventory reserves once per order id, and the orders service derives the order id
    from the request's key (:func:`order_id`), so every request has at most one
    reservation, found by its key alone, even for a request that was refused."""

    #: Requests answered ``out_of_stock`` whose order's stock was taken: its reservation
    #: is held, confirmed or released. Duplicates of one reservation request (an agent
    #: retry in another region) that were told different things.
    refused_but_reserved: list[str]
    #: Accepted requests whose order has no reservation that took stock.
    sold_unreserved: list[str]
    #: Reservations that took stock for an order id no request derives: a second order
    #: (and stock take) for one request.
    stray: list[str]
    #: SKUs whose units taken out of stock (seeded - available) are fewer than their
    #: held and confirmed reservations (reserved without stock), or more than those plus
    #: every released or pending reservation could explain (stock taken twice).
    unaccounted: list[str]

    @property
    def count(self) -> int:
        return (
            len(self.refused_but_reserved)
            + len(self.sold_unreserved)
            + len(self.stray)
            + len(self.unaccounted)
        )


def reservation_audit(
    requests: Iterable[OrderRequest], state: audit.GlobalState, seeded: Mapping[str, int]
) -> ReservationAudit:
    """Check each request's reservation against its answer, and each SKU's stock against
    its reservations.

    Per SKU, units taken must lie between the held and confirmed reservations and those
    plus the released and pending ones: a released reservation's units may still be
    taken (a crash between marking it released and giving the stock back, which
    inventory allows), and so may a pending one's (its claimant crashed after taking;
    finished by a retry or inventory's sweep). The audit's two scans (stock, then
    reservations) only ever widen this: a release between them moves units from held
    to released. What is left outside the range is stock taken without a reservation,
    or a reservation without stock."""
    reservations = state.reservations
    refused_but_reserved: list[str] = []
    sold_unreserved: list[str] = []
    derived: set[str] = set()
    for r in requests:
        oid = order_id(r.key)
        derived.add(oid)
        made = reservations.get(oid)
        if r.outcome == "rejected" and r.reason == "out_of_stock":
            if made is not None and made.state in MADE:
                refused_but_reserved.append(f"{r.key} (order {oid}, reservation {made.state})")
        elif r.outcome == "accepted":
            sold = reservations.get(r.order_id or oid)
            if sold is None or sold.state not in MADE:
                sold_unreserved.append(
                    f"{r.key} (order {r.order_id or oid}, "
                    f"reservation {sold.state if sold else 'missing'})"
                )
    stray = sorted(
        f"{res.order_id} ({res.sku} x {res.qty}, {res.state})"
        for res in reservations.values()
        if res.state in MADE and res.order_id not in derived
    )
    units: dict[str, Counter[str]] = {}
    for res in reservations.values():
        units.setdefault(res.sku, Counter())[res.state] += res.qty
    unaccounted = []
    for sku in sorted(set(seeded) | set(units)):
        by_state = units.get(sku, Counter())
        taken = seeded.get(sku, 0) - max(0, state.available.get(sku, 0))
        held = by_state["held"] + by_state["confirmed"]
        slack = by_state["released"] + by_state["pending"]
        if not held <= taken <= held + slack:
            unaccounted.append(
                f"{sku}: {taken} units taken, {held} held or confirmed"
                + (f" (+ {slack} released or pending)" if slack else "")
            )
    return ReservationAudit(refused_but_reserved, sold_unreserved, stray, unaccounted)


def reservations_check(r: ReservationAudit, stored: int) -> Check:
    """The verdict on :func:`reservation_audit`: fails on any anomaly it found."""
    if r.count == 0:
        detail = (
            f"{stored} reservations: none for an order told out of stock, one for each "
            "accepted order, none for an unknown order, and per SKU the stock taken adds up"
        )
    else:
        parts = [
            f"{len(items)} {what} {items[:5]}"
            for what, items in (
                ("told out_of_stock with stock taken", r.refused_but_reserved),
                ("accepted without a reservation", r.sold_unreserved),
                ("reservation(s) for no request", r.stray),
                ("SKU(s) whose stock taken does not add up", r.unaccounted),
            )
            if items
        ]
        detail = "; ".join(parts)
    return Check("reservations", r.count == 0, detail, r.count)


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
