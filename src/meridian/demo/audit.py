"""After the load: what the global state says, checked against what the clients were told.

:func:`read_state` takes strong scans of the ``orders`` and ``inventory``
keyspaces through one agent. The checks are pure functions of that state and
of the shop's records:

- **oversell**, per SKU: the units of live (placed, not cancelled) orders must
  not exceed what inventory took out of stock (seeded - available), which in
  turn never exceeds what was seeded. Oversell is the sum over SKUs of
  ``sold - (seeded - available)`` where positive (``available`` is never
  negative, so this also counts any ``sold - seeded`` above zero);
- **duplicates**: an Idempotency-Key answered with two order ids, or one
  request (each carries a unique customer tag) stored as two orders;
- **lost writes**: an acknowledged order missing from the store, or an
  acknowledged cancel not cancelled there;
- **read models**: each region's ``GET /readmodel`` hashes must equal the hash
  of the stored orders' ids and statuses (see the orders example's readmodel.go).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meridian.client import MeridianClient, Strong
from meridian.demo.shop import OrderRequest


@dataclass(frozen=True)
class StoredOrder:
    id: str
    sku: str
    qty: int
    status: str
    customer: str
    region: str


@dataclass(frozen=True)
class Reservation:
    order_id: str
    sku: str
    qty: int
    state: str


@dataclass
class GlobalState:
    orders: dict[str, StoredOrder] = field(default_factory=dict)
    available: dict[str, int] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    #: Entries that could not be parsed (key -> why).
    unreadable: dict[str, str] = field(default_factory=dict)


async def read_state(agent: str, tls: Path | None = None) -> GlobalState:
    """Strong scans of ``orders`` and ``inventory`` through the agent at ``agent``
    (gRPC; mutual TLS as the identity in ``tls``, if given)."""
    state = GlobalState()
    async with MeridianClient(agent, timeout_s=30.0, tls=tls) as client:
        async for e in client.scan("orders", consistency=Strong()):
            try:
                v = json.loads(e.value)
                state.orders[e.key] = StoredOrder(
                    str(v["id"]),
                    str(v["sku"]),
                    int(v["qty"]),
                    str(v["status"]),
                    str(v.get("customer", "")),
                    str(v.get("region", "")),
                )
            except (ValueError, KeyError, TypeError) as exc:
                state.unreadable[f"orders/{e.key}"] = repr(exc)
        async for e in client.scan("inventory", "stock/", consistency=Strong()):
            try:
                state.available[e.key.removeprefix("stock/")] = int(
                    json.loads(e.value)["available"]
                )
            except (ValueError, KeyError, TypeError) as exc:
                state.unreadable[f"inventory/{e.key}"] = repr(exc)
        async for e in client.scan("inventory", "reservation/", consistency=Strong()):
            try:
                v = json.loads(e.value)
                state.reservations[str(v["order_id"])] = Reservation(
                    str(v["order_id"]), str(v["sku"]), int(v["qty"]), str(v["state"])
                )
            except (ValueError, KeyError, TypeError) as exc:
                state.unreadable[f"inventory/{e.key}"] = repr(exc)
    return state


def save(path: Path, state: GlobalState, requests: Iterable[OrderRequest]) -> None:
    """Write the audited state and what each request was told (``audit.json`` in the
    run's directory), so the checks can be run again on them, or on doctored copies."""
    doc = {
        "orders": [asdict(o) for o in state.orders.values()],
        "available": state.available,
        "reservations": [asdict(r) for r in state.reservations.values()],
        "unreadable": state.unreadable,
        "requests": [
            {
                "key": r.key,
                "region": r.region,
                "sku": r.sku,
                "qty": r.qty,
                "customer": r.customer,
                "outcome": r.outcome,
                "reason": r.reason,
                "order_ids": sorted(r.order_ids),
                "cancelled_at": r.cancelled_at,
            }
            for r in requests
        ],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")


def load(path: Path) -> tuple[GlobalState, list[OrderRequest]]:
    """What :func:`save` wrote."""
    doc = json.loads(path.read_text())
    state = GlobalState(
        orders={o["id"]: StoredOrder(**o) for o in doc["orders"]},
        available={k: int(v) for k, v in doc["available"].items()},
        reservations={r["order_id"]: Reservation(**r) for r in doc["reservations"]},
        unreadable=dict(doc["unreadable"]),
    )
    requests = []
    for r in doc["requests"]:
        req = OrderRequest(
            r["key"], r["region"], r["sku"], r["qty"], r["customer"], b"", r["outcome"], r["reason"]
        )
        req.order_ids = set(r["order_ids"])
        req.cancelled_at = r["cancelled_at"]
        requests.append(req)
    return state, requests


@dataclass(frozen=True)
class SkuLine:
    sku: str
    seeded: int
    available: int
    #: Units of placed (not cancelled) orders in the store.
    sold: int
    #: Units held by reservations (held or confirmed).
    reserved: int
    oversell: int

    def to_json(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "seeded": self.seeded,
            "available": self.available,
            "sold": self.sold,
            "reserved": self.reserved,
            "oversell": self.oversell,
        }


def stock_lines(state: GlobalState, seeded: Mapping[str, int]) -> list[SkuLine]:
    sold: Counter[str] = Counter()
    for o in state.orders.values():
        if o.status == "placed":
            sold[o.sku] += o.qty
    reserved: Counter[str] = Counter()
    for r in state.reservations.values():
        if r.state in ("held", "confirmed"):
            reserved[r.sku] += r.qty
    lines = []
    for sku in sorted(set(seeded) | set(sold)):
        seed = seeded.get(sku, 0)
        available = max(0, state.available.get(sku, 0))
        taken = seed - available
        lines.append(
            SkuLine(sku, seed, available, sold[sku], reserved[sku], max(0, sold[sku] - taken))
        )
    return lines


@dataclass(frozen=True)
class Duplicates:
    #: Keys answered with more than one order id.
    keys: list[str]
    #: Customer tags (one per request) stored as more than one order.
    stored: list[str]

    @property
    def count(self) -> int:
        return len(self.keys) + len(self.stored)


def duplicates(requests: Iterable[OrderRequest], state: GlobalState) -> Duplicates:
    keys = sorted(r.key for r in requests if len(r.order_ids) > 1)
    per_customer: defaultdict[str, list[str]] = defaultdict(list)
    for o in state.orders.values():
        per_customer[o.customer].append(o.id)
    stored = sorted(c for c, ids in per_customer.items() if len(ids) > 1)
    return Duplicates(keys, stored)


def lost_writes(requests: Iterable[OrderRequest], state: GlobalState) -> list[str]:
    """Acknowledged orders missing from the store, and acknowledged cancels not applied there."""
    lost = []
    for r in requests:
        if r.outcome != "accepted":
            continue
        stored = state.orders.get(r.order_id)
        if stored is None:
            lost.append(f"order {r.order_id} (key {r.key}) acknowledged but not stored")
        elif r.cancelled_at is not None and stored.status != "cancelled":
            lost.append(f"order {r.order_id}: cancel acknowledged, stored as {stored.status!r}")
    return lost


def readmodel_hashes(orders: Iterable[StoredOrder]) -> tuple[str, str]:
    """(ids_hash, state_hash) as the orders example's GET /readmodel computes them."""
    ids, states = hashlib.sha256(), hashlib.sha256()
    for o in sorted(orders, key=lambda o: o.id):
        ids.update(f"{o.id}\n".encode())
        states.update(f"{o.id} {o.status}\n".encode())
    return ids.hexdigest(), states.hexdigest()
