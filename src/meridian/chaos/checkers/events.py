"""Events (DESIGN §4): no acknowledged event lost, no unexpected event, order kept
per producer, duplicates absorbed.

The events workload (:mod:`meridian.chaos.workloads.events`) records:

- ``publish`` ops, key the event id, invoke value ``{"producer", "seq", "key"}``
  (region: where it was published). Each producer publishes ``seq`` 1, 2, 3, ...
  one at a time, all with its own event key, and retries an event (same id) until
  it is acknowledged before it publishes the next; it may also publish an
  acknowledged event again (a producer that missed the ack). An event is
  *acknowledged* if one of its publishes ended ok;
- ``deliver`` ops, key the event id, region the consumer group's region, value
  ``{"group", "attempt", "origin", "key", "session"}``: a delivery to the
  group's one subscriber in that region (``max_in_flight`` 1), ok once its ack
  was sent, fail if sending the ack failed;
- ``session`` ops, value ``{"session"}``: one subscription stream, ok if the
  workload closed it (acks flushed), info if it broke (acks sent on it may
  never have been applied);
- one ``drain`` op: invoked when every fault was healed, completed when every
  group had every acknowledged event or ``within_s`` passed.

What each checker proves, exactly:

- :class:`EventsDeliveredChecker` (``events-delivered``): every acknowledged event
  was delivered and acked in every group, by ``within_s`` after the heal (the
  drain's invoke). Unknown if no event was acknowledged or there is no drain.
- :class:`EventsExpectedChecker` (``events-expected``): every delivery is of an
  event some producer published, with that producer's region as origin and its
  key (nothing invented, misattributed or altered).
- :class:`EventsOrderedChecker` (``events-ordered``): in each group, for each
  (origin region, key), i.e. each producer, the deliveries with ``attempt`` 1,
  taken in the order the subscriber received them, have increasing ``seq``.
  Redeliveries (attempt > 1, after a nack, a crash or a broken stream) may
  come later than newer events and are left out: order is defined on first
  deliveries only.
- :class:`EventsOnceChecker` (``events-once``): in each group, each event id is
  delivered with ``attempt`` 1 at most once (a second copy, from a retried
  publish or another region, is absorbed by the group's inbox), and no event is
  delivered again after its ack was sent, unless that ack was sent on a stream
  that then broke and the new delivery is a redelivery (attempt > 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from meridian.chaos.checkers.verdict import Verdict
from meridian.chaos.history import History, Op


@dataclass
class Published:
    producer: str
    seq: int
    key: str
    origin: str
    acked: bool = False


@dataclass
class EventsView:
    """A history, parsed for the event checkers."""

    published: dict[str, Published] = field(default_factory=dict)
    deliveries: list[Op] = field(default_factory=list)
    #: session id -> True if the workload closed it (acks flushed), False if it broke.
    sessions: dict[int, bool] = field(default_factory=dict)
    #: session id -> when it ended (history nanoseconds).
    session_ends: dict[int, int] = field(default_factory=dict)
    drain: Op | None = None


def view(history: History, prefix: str | None = None) -> EventsView:
    out = EventsView()
    for op in history.ops():
        if op.f in ("publish", "deliver") and (
            op.key is None or (prefix is not None and not op.key.startswith(prefix))
        ):
            continue
        if op.f == "publish" and op.key is not None:
            v = op.invoke.value
            pub = out.published.setdefault(
                op.key, Published(str(v["producer"]), int(v["seq"]), str(v["key"]), op.region)
            )
            pub.acked = pub.acked or op.type == "ok"
        elif op.f == "deliver":
            out.deliveries.append(op)
        elif op.f == "session" and isinstance(op.invoke.value, dict):
            out.sessions[int(op.invoke.value["session"])] = op.type == "ok"
            if op.end is not None:
                out.session_ends[int(op.invoke.value["session"])] = op.end
        elif op.f == "drain":
            out.drain = op
    out.deliveries.sort(key=lambda op: (op.start, op.invoke.index))
    return out


def _d(op: Op) -> dict[str, Any]:
    v = op.invoke.value
    return v if isinstance(v, dict) else {}


class EventsDeliveredChecker:
    name = "events-delivered"

    def __init__(self, groups: Sequence[str], within_s: float = 60.0, prefix: str | None = None):
        self.groups = list(groups)
        self.within_ns = int(within_s * 1e9)
        self.prefix = prefix

    def check(self, history: History) -> Verdict:
        v = view(history, self.prefix)
        acked = {eid for eid, p in v.published.items() if p.acked}
        if v.drain is None:
            return Verdict(self.name, None, "no drain after heal")
        if not acked:
            return Verdict(self.name, None, "no event was acknowledged")
        deadline = v.drain.start + self.within_ns
        first_ack: dict[tuple[str, str], int] = {}
        for op in v.deliveries:
            if op.type == "ok" and op.key is not None and op.end is not None:
                first_ack.setdefault((str(_d(op).get("group", op.region)), op.key), op.end)
        errors: list[dict[str, Any]] = []
        lost = late = 0
        for group in self.groups:
            for eid in sorted(acked):
                at = first_ack.get((group, eid))
                if at is None:
                    lost += 1
                    errors.append({"group": group, "event": eid, "problem": "never delivered"})
                elif at > deadline:
                    late += 1
                    errors.append(
                        {
                            "group": group,
                            "event": eid,
                            "problem": f"delivered {(at - v.drain.start) / 1e9:.1f}s after heal",
                        }
                    )
        details = {"acknowledged": len(acked), "groups": self.groups, "lost": lost, "late": late}
        if errors:
            return Verdict(
                self.name,
                False,
                f"{lost} (group, event) pairs lost, {late} late, of {len(acked)} acknowledged "
                f"events x {len(self.groups)} groups",
                errors,
                details,
            )
        return Verdict(
            self.name,
            True,
            f"all {len(acked)} acknowledged events delivered to all {len(self.groups)} groups",
            [],
            details,
        )


class EventsExpectedChecker:
    name = "events-expected"

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix

    def check(self, history: History) -> Verdict:
        v = view(history, self.prefix)
        errors: list[dict[str, Any]] = []
        for op in v.deliveries:
            d = _d(op)
            pub = v.published.get(op.key or "")
            where = {"group": d.get("group", op.region), "event": op.key}
            if pub is None:
                errors.append({**where, "problem": "never published"})
            elif d.get("origin") != pub.origin or d.get("key") != pub.key:
                errors.append(
                    {
                        **where,
                        "problem": f"delivered as ({d.get('origin')}, {d.get('key')}), "
                        f"published as ({pub.origin}, {pub.key})",
                    }
                )
        details = {"deliveries": len(v.deliveries), "published": len(v.published)}
        if not v.deliveries:
            return Verdict(self.name, None, "no delivery", details=details)
        if errors:
            return Verdict(
                self.name, False, f"{len(errors)} unexpected deliveries", errors, details
            )
        return Verdict(
            self.name,
            True,
            f"all {len(v.deliveries)} deliveries were published events",
            [],
            details,
        )


class EventsOrderedChecker:
    name = "events-ordered"

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix

    def check(self, history: History) -> Verdict:
        v = view(history, self.prefix)
        last: dict[tuple[str, str, str], tuple[int, str]] = {}  # (group, origin, key) -> seq, id
        seen: set[tuple[str, str]] = set()  # (group, event id) delivered as new before
        errors: list[dict[str, Any]] = []
        firsts = 0
        for op in v.deliveries:
            d = _d(op)
            pub = v.published.get(op.key or "")
            if int(d.get("attempt", 0)) != 1 or pub is None:
                continue
            # A second copy of an event is not a first delivery; events-once judges it.
            copy = (str(d.get("group", op.region)), op.key or "")
            if copy in seen:
                continue
            seen.add(copy)
            firsts += 1
            stream = (str(d.get("group", op.region)), str(d.get("origin")), str(d.get("key")))
            prev = last.get(stream)
            if prev is not None and pub.seq <= prev[0]:
                errors.append(
                    {
                        "group": stream[0],
                        "origin": stream[1],
                        "key": stream[2],
                        "problem": f"{op.key} (seq {pub.seq}) delivered first after "
                        f"{prev[1]} (seq {prev[0]})",
                    }
                )
            if prev is None or pub.seq > prev[0]:
                last[stream] = (pub.seq, op.key or "")
        details = {"first_deliveries": firsts, "streams": len(last)}
        if firsts == 0:
            return Verdict(self.name, None, "no first delivery", details=details)
        if errors:
            return Verdict(
                self.name, False, f"{len(errors)} out-of-order deliveries", errors, details
            )
        return Verdict(
            self.name,
            True,
            f"{firsts} first deliveries in producer order on {len(last)} (group, origin, key)",
            [],
            details,
        )


class EventsOnceChecker:
    name = "events-once"

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix

    def check(self, history: History) -> Verdict:
        v = view(history, self.prefix)
        firsts: dict[tuple[str, str], int] = {}
        acked_in: dict[tuple[str, str], int] = {}  # -> session of the latest ack sent
        # -> when a stream broke that carried a copy whose ack was never sent
        unacked_broke: dict[tuple[str, str], int] = {}
        errors: list[dict[str, Any]] = []
        excused = 0
        for op in v.deliveries:
            d = _d(op)
            at = (str(d.get("group", op.region)), op.key or "")
            attempt = int(d.get("attempt", 0))
            where = {"group": at[0], "event": at[1], "attempt": attempt}
            if at in acked_in:
                if not v.sessions.get(acked_in[at], False):
                    # The ack went out on a stream that then broke: it may never have
                    # been applied. If the group's server died too, JetStream may have
                    # lost its delivery count as well, so the redelivery can say
                    # attempt 1 again.
                    excused += 1
                elif attempt > 1:
                    errors.append(
                        {**where, "problem": "redelivered after an ack on a stream that held"}
                    )
                else:
                    errors.append({**where, "problem": "a second copy delivered as new"})
            elif attempt == 1 and firsts.get(at, 0) >= 1:
                if unacked_broke.get(at, op.start + 1) <= op.start:
                    # The earlier copy was never acked, and its stream (with the
                    # group's server, say) broke before this one came: JetStream
                    # may have lost the delivery count, not the event.
                    excused += 1
                else:
                    errors.append({**where, "problem": "a second copy delivered as new"})
            if attempt == 1:
                firsts[at] = firsts.get(at, 0) + 1
            session = int(d.get("session", -1))
            if op.type == "ok":
                acked_in[at] = session
            elif v.sessions.get(session) is False and session in v.session_ends:
                unacked_broke[at] = v.session_ends[session]
        details = {"deliveries": len(v.deliveries), "excused_redeliveries": excused}
        if not v.deliveries:
            return Verdict(self.name, None, "no delivery", details=details)
        if errors:
            return Verdict(self.name, False, f"{len(errors)} duplicate deliveries", errors, details)
        return Verdict(
            self.name,
            True,
            f"{len(acked_in)} (group, event) pairs acked once each; {excused} redeliveries "
            "after a broken stream",
            [],
            details,
        )
