"""The demo's reservation invariant: what the shoppers were told agrees with
inventory's reservations, order by order, and the stock taken adds up to them,
SKU by SKU. Tested on runs known to be good and runs known to be bad (each with
one anomaly, so the check that should catch it must fail)."""

from __future__ import annotations

from pathlib import Path

from meridian.demo import audit
from meridian.demo.options import DemoOptions
from meridian.demo.report import Report
from meridian.demo.shop import OrderRequest, Shop
from meridian.demo.verdict import conclude, order_id, reservation_audit, reservations_check

SEEDED = {"sku-1": 5}


def request(key: str, outcome: str, reason: str = "", qty: int = 1) -> OrderRequest:
    req = OrderRequest(key, "us-east", "sku-1", qty, f"shopper {key}", b"", outcome, reason)
    if outcome == "accepted":
        req.order_ids = {order_id(key)}
    return req


def reservation(key: str, state: str, qty: int = 1) -> tuple[str, audit.Reservation]:
    oid = order_id(key)
    return oid, audit.Reservation(oid, "sku-1", qty, state)


def store(available: int, *reservations: tuple[str, audit.Reservation]) -> audit.GlobalState:
    return audit.GlobalState(available={"sku-1": available}, reservations=dict(reservations))


def good_run() -> tuple[list[OrderRequest], audit.GlobalState]:
    """Two sold (one cancelled since), one refused for stock, one without an answer."""
    requests = [
        request("k-sold", "accepted", qty=2),
        request("k-cancelled", "accepted"),
        request("k-refused", "rejected", "out_of_stock", qty=4),
        request("k-unknown", "unknown"),
    ]
    state = store(
        2,
        reservation("k-sold", "confirmed", 2),
        reservation("k-cancelled", "released"),
        reservation("k-refused", "refused", 4),
        reservation("k-unknown", "held"),
    )
    return requests, state


def test_the_order_id_is_the_one_the_orders_service_derives() -> None:
    # What orders.go's orderID returns for this key (computed with Go).
    assert order_id("demo-1-us-east-0-1") == "o-fc1817753cb3da0f32a1"


def test_a_clean_run_passes() -> None:
    requests, state = good_run()
    r = reservation_audit(requests, state, SEEDED)
    assert r.count == 0, r
    check = reservations_check(r, len(state.reservations))
    assert check.ok and check.value == 0 and "4 reservations" in check.detail


def test_a_refusal_without_a_record_passes_as_the_first_version_stored_it() -> None:
    requests, state = good_run()
    del state.reservations[order_id("k-refused")]
    assert reservation_audit(requests, state, SEEDED).count == 0


def test_stock_a_crashed_release_or_claim_still_holds_is_explained() -> None:
    requests, state = good_run()
    # The cancelled order's unit was never given back, and a claimant died holding one.
    _, pending = reservation("k-pending", "pending")
    state.reservations[pending.order_id] = pending
    state.available["sku-1"] = 0
    requests.append(request("k-pending", "unknown"))
    assert reservation_audit(requests, state, SEEDED).count == 0


def test_an_order_told_out_of_stock_whose_stock_was_taken_fails() -> None:
    # The race: one duplicate took the last unit and recorded the reservation, the
    # other found the unit gone and no reservation yet, and answered out of stock.
    requests = [request("k-raced", "rejected", "out_of_stock")]
    state = store(4, reservation("k-raced", "held"))
    r = reservation_audit(requests, state, SEEDED)
    assert r.refused_but_reserved == [f"k-raced (order {order_id('k-raced')}, reservation held)"]
    check = reservations_check(r, 1)
    assert not check.ok and check.value == 1
    assert "told out_of_stock with stock taken" in check.detail
    # Still wrong once the orphaned reservation expired and gave its unit back.
    expired = store(5, reservation("k-raced", "released"))
    assert reservation_audit(requests, expired, SEEDED).count == 1


def test_an_accepted_order_without_stock_taken_fails() -> None:
    requests = [request("k-sold", "accepted")]
    for state in (store(5), store(5, reservation("k-sold", "refused"))):
        r = reservation_audit(requests, state, SEEDED)
        assert len(r.sold_unreserved) == 1 and not reservations_check(r, 1).ok


def test_a_second_reservation_for_one_request_fails() -> None:
    requests, state = good_run()
    twin = audit.Reservation("o-twin", "sku-1", 2, "held")
    state.reservations["o-twin"] = twin
    state.available["sku-1"] = 0
    r = reservation_audit(requests, state, SEEDED)
    assert r.stray == ["o-twin (sku-1 x 2, held)"] and r.count == 1


def test_stock_taken_twice_for_one_order_fails() -> None:
    requests, state = good_run()
    # Units gone that no reservation, released or pending, can explain.
    state.available["sku-1"] = 0
    r = reservation_audit(requests, state, SEEDED)
    assert r.unaccounted == ["sku-1: 5 units taken, 3 held or confirmed (+ 1 released or pending)"]
    assert not reservations_check(r, len(state.reservations)).ok


def test_a_reservation_without_its_stock_taken_fails() -> None:
    requests, state = good_run()
    state.available["sku-1"] = 3
    assert reservation_audit(requests, state, SEEDED).unaccounted == [
        "sku-1: 2 units taken, 3 held or confirmed (+ 1 released or pending)"
    ]


def conclude_on(requests: list[OrderRequest], state: audit.GlobalState) -> Report:
    opts = DemoOptions(skus=1, stock_per_sku=5, workdir=Path("/nonexistent"))
    shop = Shop(None, "https://gateway", "Meridian-Region", ["us-east"], ["sku-1"], seed=1)  # type: ignore[arg-type]
    shop.orders = {r.key: r for r in requests}
    rep = Report(options={})
    conclude(
        rep, opts, shop, state, gateway_url="", load_s=1.0, settled=0, converged=0.0, snapshots=[]
    )
    return rep


def test_the_demo_verdict_fails_on_the_race_and_passes_without_it() -> None:
    requests, state = good_run()
    check = {c.name: c for c in conclude_on(requests, state).checks}["reservations"]
    assert check.ok, check.detail
    requests.append(request("k-raced", "rejected", "out_of_stock"))
    state.reservations.update([reservation("k-raced", "held")])
    state.available["sku-1"] = 1
    rep = conclude_on(requests, state)
    check = {c.name: c for c in rep.checks}["reservations"]
    assert not check.ok and not rep.ok
    assert rep.invariants["reservation_anomalies"] == 1
    assert rep.invariants["refused_but_reserved"] == [
        f"k-raced (order {order_id('k-raced')}, reservation held)"
    ]
