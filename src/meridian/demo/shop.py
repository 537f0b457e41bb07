"""The shoppers: simulated clients in every region, all going through the gateway.

Each client names its region in the gateway's hint header (``Meridian-Region``)
and loops, with a short think time between requests:

- 60 %: place a new order (``POST /v1/invoke/orders/orders``) for a random SKU
  (the first SKUs are the popular ones) under a fresh ``Idempotency-Key``. A
  failed attempt (5xx, no answer) is sent again with the same key, as a real
  client would. An order whose key another attempt still holds (409
  ``request_in_progress``: e.g. the attempt died with its region and its lease
  has not run out) is set aside and asked about again every second while the
  shopper goes on. One accepted order in six is sent once more on purpose,
  half the time through another region, to show that the same key never
  places a second order;
- 30 %: read an accepted order (``GET .../orders/{id}``) strong, bounded (500 ms)
  or eventual;
- 10 %: cancel an accepted order (``POST .../orders/{id}/cancel``).

Every HTTP exchange is recorded (:class:`Exchange`), and every order request
(:class:`OrderRequest`) keeps what the shop answered for its key. Requests
still without a definite answer when the load stops are settled afterwards by
sending them again with their keys (:meth:`Shop.settle`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

ORDERS = "/v1/invoke/orders/orders"
#: The agent gives each call this much time (Meridian-Timeout-Ms); the client a little more.
CALL_TIMEOUT_MS = 10_000
CLIENT_TIMEOUT_S = 15.0
CONSISTENCIES = ("strong", "bounded", "eventual")
PLACE_ATTEMPTS = 6
#: How soon a shopper asks again about an order whose key is held by another attempt.
PARKED_RETRY_S = 1.0
CANCEL_ATTEMPTS = 4


@dataclass(frozen=True)
class Exchange:
    """One HTTP request a client sent through the gateway, and what came back."""

    region: str  # the hinted region: the client's own
    op: str  # place | replay | settle | read | cancel
    started: float  # seconds since the load began
    ended: float
    status: int  # 0: no answer (connection error, timeout)
    served_by: str  # the gateway's Meridian-Gateway-Region, "" if none
    error: str  # the error code of the answer ("" if none), or the exception's name
    detail: str = ""  # the error's message, shortened
    version: str = ""  # the orders version that answered (Meridian-Version), "" if none
    instance_region: str = ""  # the region of the instance that answered (Meridian-Region)

    @property
    def served(self) -> bool:
        """The shop gave a definite answer (a success, or a refusal such as out of stock)."""
        return 200 <= self.status < 500 and self.error not in ("request_in_progress", "canceled")

    @property
    def latency_s(self) -> float:
        return self.ended - self.started


@dataclass
class OrderRequest:
    """One order a client asked for, under one Idempotency-Key."""

    key: str
    region: str
    sku: str
    qty: int
    customer: str
    body: bytes
    #: pending (being sent) | accepted | rejected | unknown (no definite answer yet)
    outcome: str = "pending"
    reason: str = ""
    last_error: str = ""
    #: Order ids of every 201 answer for this key: exactly one if no duplicate.
    order_ids: set[str] = field(default_factory=set)
    attempts: int = 0
    accepted_at: float | None = None
    #: Deliberate re-sends of the key after it was accepted, and how they were answered.
    replays: int = 0
    replays_same: int = 0
    replays_marked: int = 0
    #: When a parked request is due to be sent again (seconds since the load began).
    retry_at: float = 0.0
    cancel_requested: bool = False
    #: When a cancel was acknowledged (seconds since the load began), else None.
    cancelled_at: float | None = None
    cancel_unknown: bool = False

    @property
    def order_id(self) -> str:
        return next(iter(sorted(self.order_ids)), "")


@dataclass
class ReadStats:
    ok: Counter[str] = field(default_factory=Counter)  # by consistency
    not_yet_visible: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    #: Strong reads that did not see an acknowledged order, or its acknowledged cancel.
    strong_anomalies: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    error: str
    served_by: str
    replayed: bool
    detail: str = ""
    version: str = ""
    instance_region: str = ""


class Shop:
    """The clients of one run, and everything they saw."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        gateway_url: str,
        hint_header: str,
        regions: Sequence[str],
        skus: Sequence[str],
        *,
        seed: int,
    ) -> None:
        self.session = session
        self.gateway_url = gateway_url
        self.hint_header = hint_header
        self.regions = tuple(regions)
        self.skus = tuple(skus)
        # Popularity falls with the SKU's number, so the first ones sell out first.
        self.sku_weights = [1.0 / (i + 1) for i in range(len(self.skus))]
        self.seed = seed
        self.t0 = time.monotonic()
        self.exchanges: list[Exchange] = []
        self.orders: dict[str, OrderRequest] = {}
        self.accepted: list[OrderRequest] = []
        self.reads = ReadStats()
        self.cancels: Counter[str] = Counter()

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- the load -----------------------------------------------------------

    async def run(self, clients_per_region: int, stop: asyncio.Event) -> None:
        """Run every client until ``stop`` is set; each finishes the request it is in."""
        async with asyncio.TaskGroup() as tg:
            for region in self.regions:
                for n in range(clients_per_region):
                    tg.create_task(self._client(region, n, stop))

    async def _client(self, region: str, n: int, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.seed}/{region}/{n}")
        seq = 0
        # Orders whose key another attempt still holds (409 request_in_progress): the
        # shopper is told "being processed", goes on shopping, and asks again later.
        parked: list[OrderRequest] = []
        while not stop.is_set():
            due = next((r for r in parked if r.retry_at <= self.now()), None)
            roll = rng.random()
            if due is not None:
                parked.remove(due)
                await self._place(due, region, "place", 1, stop)
                if due.outcome == "unknown":
                    due.retry_at = self.now() + PARKED_RETRY_S
                    parked.append(due)
            elif roll < 0.6 or not self.accepted:
                seq += 1
                req = await self._new_order(region, n, seq, rng, stop)
                if req.outcome == "unknown" and req.last_error == "request_in_progress":
                    req.retry_at = self.now() + PARKED_RETRY_S
                    parked.append(req)
            elif roll < 0.9:
                await self._read(region, rng)
            else:
                await self._cancel(region, rng, stop)
            await asyncio.sleep(rng.uniform(0.0, 0.1))

    async def _new_order(
        self, region: str, n: int, seq: int, rng: random.Random, stop: asyncio.Event
    ) -> OrderRequest:
        sku = rng.choices(self.skus, weights=self.sku_weights)[0]
        qty = rng.randint(1, 3)
        key = f"demo-{self.seed}-{region}-{n}-{seq}"
        customer = f"shopper-{region}-{n}#{seq}"
        body = json.dumps({"sku": sku, "qty": qty, "customer": customer}).encode()
        req = OrderRequest(key, region, sku, qty, customer, body)
        self.orders[key] = req
        await self._place(req, region, "place", PLACE_ATTEMPTS, stop)
        if req.outcome == "accepted" and rng.random() < 1 / 6:
            # The deliberate retry: the same request again, as after a lost answer.
            other = self.regions[(self.regions.index(region) + 1) % len(self.regions)]
            await self._replay(req, other if rng.random() < 0.5 else region)
        return req

    async def _place(
        self, req: OrderRequest, hint: str, op: str, attempts: int, stop: asyncio.Event | None
    ) -> None:
        for attempt in range(attempts):
            if attempt and stop is not None and stop.is_set():
                break
            a = await self._send(
                hint,
                op,
                "POST",
                ORDERS,
                body=req.body,
                headers={"Idempotency-Key": req.key, "Content-Type": "application/json"},
            )
            req.attempts += 1
            if a.status == 201:
                self._accept(req, a)
                return
            if 400 <= a.status < 500 and a.error != "request_in_progress":
                # A stored refusal (409 out_of_stock, reservation_released), or one this
                # client does not expect: recorded with its reason.
                req.outcome, req.reason = "rejected", a.error or f"http_{a.status}"
                return
            req.last_error = a.error or (f"http_{a.status}" if a.status else "no_answer")
            if a.error == "request_in_progress":
                break  # another attempt holds the key, perhaps one that died: ask later
            if attempt + 1 < attempts:
                await asyncio.sleep(min(2.0, 0.2 * 2**attempt) * random.uniform(0.8, 1.2))
        req.outcome = "unknown"

    def _accept(self, req: OrderRequest, a: Answer) -> None:
        order_id = str(a.body.get("id", ""))
        req.order_ids.add(order_id)
        if req.outcome != "accepted":
            req.outcome, req.reason = "accepted", ""
            req.accepted_at = self.now()
            self.accepted.append(req)

    async def _replay(self, req: OrderRequest, hint: str) -> None:
        before = set(req.order_ids)
        a = await self._send(
            hint,
            "replay",
            "POST",
            ORDERS,
            body=req.body,
            headers={"Idempotency-Key": req.key, "Content-Type": "application/json"},
        )
        if a.status != 201:
            return  # not answered: nothing to compare
        req.replays += 1
        req.order_ids.add(str(a.body.get("id", "")))
        req.replays_same += req.order_ids == before
        req.replays_marked += a.replayed

    async def _read(self, region: str, rng: random.Random) -> None:
        req = rng.choice(self.accepted)
        consistency = rng.choice(CONSISTENCIES)
        query = {"strong": "strong", "eventual": "eventual"}.get(
            consistency, "bounded&max_staleness_ms=500"
        )
        cancel_known = req.cancelled_at is not None
        a = await self._send(region, "read", "GET", f"{ORDERS}/{req.order_id}?consistency={query}")
        if a.status == 200:
            self.reads.ok[consistency] += 1
            if consistency == "strong" and cancel_known and a.body.get("status") != "cancelled":
                self.reads.strong_anomalies.append(
                    f"{req.order_id}: cancel acknowledged, strong read said {a.body.get('status')!r}"
                )
        elif a.status == 404:
            self.reads.not_yet_visible[consistency] += 1
            if consistency == "strong":
                self.reads.strong_anomalies.append(
                    f"{req.order_id}: acknowledged order not found by a strong read"
                )
        else:
            self.reads.failed[consistency] += 1

    async def _cancel(self, region: str, rng: random.Random, stop: asyncio.Event | None) -> None:
        candidates = [r for r in self.accepted if not r.cancel_requested]
        if not candidates:
            return
        req = rng.choice(candidates)
        req.cancel_requested = True
        await self._send_cancel(req, region, CANCEL_ATTEMPTS, stop)

    async def _send_cancel(
        self, req: OrderRequest, hint: str, attempts: int, stop: asyncio.Event | None
    ) -> None:
        for attempt in range(attempts):
            if attempt and stop is not None and stop.is_set():
                break
            a = await self._send(hint, "cancel", "POST", f"{ORDERS}/{req.order_id}/cancel")
            if a.status == 200:
                req.cancelled_at = self.now()
                req.cancel_unknown = False
                self.cancels["ok"] += 1
                return
            if 400 <= a.status < 500:
                self.cancels[a.error or f"http_{a.status}"] += 1
                req.cancel_unknown = False
                return
            if attempt + 1 < attempts:
                await asyncio.sleep(min(2.0, 0.2 * 2**attempt) * random.uniform(0.8, 1.2))
        req.cancel_unknown = True

    # -- after the load -----------------------------------------------------

    def last_write(self) -> float:
        """When the last order or cancel was acknowledged (seconds since the load began)."""
        return max(
            (e.ended for e in self.exchanges if e.op != "read" and 200 <= e.status < 300),
            default=0.0,
        )

    def unsettled(self) -> tuple[list[OrderRequest], list[OrderRequest]]:
        """Orders and cancels sent without a definite answer yet."""
        orders = [r for r in self.orders.values() if r.outcome in ("unknown", "pending")]
        cancels = [r for r in self.orders.values() if r.cancel_unknown]
        return orders, cancels

    async def settle(self, timeout_s: float) -> int:
        """Send every request without a definite answer again (same key, same region)
        until answered or ``timeout_s`` passes; returns how many were settled. A command
        whose holder died with its region is taken over once its lease runs out."""
        orders, cancels = self.unsettled()
        deadline = time.monotonic() + timeout_s
        settled = 0

        async def order(req: OrderRequest) -> None:
            nonlocal settled
            while time.monotonic() < deadline:
                await self._place(req, req.region, "settle", 1, None)
                if req.outcome in ("accepted", "rejected"):
                    settled += 1
                    return
                await asyncio.sleep(1.0)

        async def cancel(req: OrderRequest) -> None:
            nonlocal settled
            while time.monotonic() < deadline and req.cancel_unknown:
                await self._send_cancel(req, req.region, 1, None)
                if not req.cancel_unknown:
                    settled += 1
                    return
                await asyncio.sleep(1.0)

        async with asyncio.TaskGroup() as tg:
            for req in orders:
                tg.create_task(order(req))
            for req in cancels:
                tg.create_task(cancel(req))
        return settled

    # -- HTTP ---------------------------------------------------------------

    async def _send(
        self,
        hint: str,
        op: str,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        started = self.now()
        sent = {self.hint_header: hint, "Meridian-Timeout-Ms": str(CALL_TIMEOUT_MS)}
        sent.update(headers or {})
        try:
            async with self.session.request(
                method,
                self.gateway_url + path,
                data=body,
                headers=sent,
                timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S),
            ) as resp:
                raw = await resp.read()
                answer = Answer(
                    resp.status,
                    _json_object(raw),
                    "",
                    resp.headers.get("Meridian-Gateway-Region", ""),
                    resp.headers.get("Idempotent-Replayed", "") == "true",
                    version=resp.headers.get("Meridian-Version", ""),
                    instance_region=resp.headers.get("Meridian-Region", ""),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            answer = Answer(0, {}, type(exc).__name__, "", False, str(exc)[:200])
        if answer.status >= 400:
            code, detail = _error(answer.body)
            answer = dataclasses.replace(answer, error=code, replayed=False, detail=detail)
        self.exchanges.append(
            Exchange(
                hint,
                op,
                started,
                self.now(),
                answer.status,
                answer.served_by,
                answer.error,
                answer.detail,
                answer.version,
                answer.instance_region,
            )
        )
        return answer


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error(body: dict[str, Any]) -> tuple[str, str]:
    """(code, message) of the service's ``{"error": "out_of_stock", "detail": ...}`` or
    Meridian's ``{"error": {"code": ..., "message": ...}}``."""
    error = body.get("error")
    if isinstance(error, str):
        return error, str(body.get("detail", ""))[:200]
    if isinstance(error, dict):
        return str(error.get("code", "")).lower(), str(error.get("message", ""))[:200]
    return "", ""
