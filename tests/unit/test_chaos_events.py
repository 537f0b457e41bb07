"""The event checkers on hand-written histories: each known-bad one must fail."""

from __future__ import annotations

from typing import Any

from meridian.chaos.checkers.events import (
    EventsDeliveredChecker,
    EventsExpectedChecker,
    EventsOnceChecker,
    EventsOrderedChecker,
)
from meridian.chaos.history import History, build

S = 1_000_000_000
GROUPS = ["us-east", "eu-west"]


class H:
    """A history under construction: publishes, deliveries, sessions, a drain."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.t = 0
        self.p = 100

    def _op(self, f: str, key: str | None, value: Any, region: str, end: str = "ok") -> None:
        self.p += 1
        self.t += 1000
        self.rows.append(("invoke", self.p, f, key, value, self.t, region))
        self.t += 1000
        self.rows.append((end, self.p, f, key, value, self.t, region))

    def publish(self, producer: str, seq: int, region: str, end: str = "ok") -> H:
        value = {"producer": producer, "seq": seq, "key": producer}
        self._op("publish", f"r-{producer}-{seq}", value, region, end)
        return self

    def deliver(
        self,
        group: str,
        producer: str,
        seq: int,
        origin: str,
        *,
        attempt: int = 1,
        session: int = 1,
        end: str = "ok",
        key: str | None = None,
    ) -> H:
        value = {
            "group": group,
            "attempt": attempt,
            "origin": origin,
            "key": key or producer,
            "session": session,
        }
        self._op("deliver", f"r-{producer}-{seq}", value, group, end)
        return self

    def session(self, n: int, end: str) -> H:
        self._op("session", "g", {"session": n}, "us-east", end)
        return self

    def drain(self, at: int | None = None) -> H:
        self.p += 1
        start = self.t + 1 if at is None else at
        self.rows.append(("invoke", self.p, "drain", None, None, start, ""))
        self.rows.append(("ok", self.p, "drain", None, {"complete": True}, self.t + 2, ""))
        return self

    def history(self) -> History:
        return build(*sorted(self.rows, key=lambda r: r[5]))


def good() -> H:
    h = H()
    for seq in (1, 2, 3):
        h.publish("us-east-p0", seq, "us-east")
        h.publish("eu-west-p0", seq, "eu-west")
    # A publish retried after a timeout: the same event, acknowledged the second time.
    h.publish("us-east-p0", 4, "us-east", end="info").publish("us-east-p0", 4, "us-east")
    for group in GROUPS:
        for seq in (1, 2, 3, 4):
            h.deliver(group, "us-east-p0", seq, "us-east")
        for seq in (1, 2, 3):
            h.deliver(group, "eu-west-p0", seq, "eu-west")
    h.session(1, "ok")
    h.t -= 10_000  # the drain began before the last deliveries
    return h.drain(at=h.t)


def checks(h: History) -> dict[str, bool | None]:
    checkers = [
        EventsDeliveredChecker(GROUPS, within_s=60),
        EventsExpectedChecker(),
        EventsOrderedChecker(),
        EventsOnceChecker(),
    ]
    return {c.name: c.check(h).valid for c in checkers}


def test_a_good_history_passes_every_event_check() -> None:
    assert checks(good().history()) == {
        "events-delivered": True,
        "events-expected": True,
        "events-ordered": True,
        "events-once": True,
    }


def test_a_lost_acknowledged_event_is_caught() -> None:
    h = good().publish("eu-west-p0", 4, "eu-west").deliver("us-east", "eu-west-p0", 4, "eu-west")
    v = EventsDeliveredChecker(GROUPS).check(h.drain().history())
    assert v.valid is False
    assert v.errors == [
        {"group": "eu-west", "event": "r-eu-west-p0-4", "problem": "never delivered"}
    ]


def test_an_unacknowledged_event_may_be_missing() -> None:
    h = good().publish("eu-west-p0", 4, "eu-west", end="info")
    assert checks(h.drain().history())["events-delivered"] is True


def test_an_event_delivered_only_after_the_bound_is_caught() -> None:
    h = good().publish("eu-west-p0", 4, "eu-west").drain(at=0)
    for group in GROUPS:
        h.t += 61 * S
        h.deliver(group, "eu-west-p0", 4, "eu-west")
    v = EventsDeliveredChecker(GROUPS, within_s=60).check(h.history())
    assert v.valid is False
    assert "after heal" in v.errors[0]["problem"]


def test_an_unexpected_event_is_caught() -> None:
    h = good().deliver("eu-west", "ap-south-p9", 1, "ap-south")
    v = EventsExpectedChecker().check(h.history())
    assert v.valid is False
    assert v.errors[0]["problem"] == "never published"


def test_an_event_delivered_with_another_origin_or_key_is_caught() -> None:
    h = good().publish("ap-south-p0", 1, "ap-south")
    h.deliver("us-east", "ap-south-p0", 1, "eu-west")
    h.deliver("eu-west", "ap-south-p0", 1, "ap-south", key="other")
    v = EventsExpectedChecker().check(h.history())
    assert v.valid is False
    assert len(v.errors) == 2


def test_a_reordered_producer_sequence_is_caught() -> None:
    h = H()
    for seq in (1, 2, 3):
        h.publish("us-east-p0", seq, "us-east")
    for seq in (1, 3, 2):
        h.deliver("eu-west", "us-east-p0", seq, "us-east")
    v = EventsOrderedChecker().check(h.history())
    assert v.valid is False
    assert "seq 2" in v.errors[0]["problem"]


def test_order_is_per_origin_and_key_and_ignores_redeliveries() -> None:
    h = H()
    for seq in (1, 2, 3):
        h.publish("us-east-p0", seq, "us-east")
        h.publish("us-east-p1", seq, "us-east")
    # Two producers interleaved; event 2 of p0 first reached the subscriber as a
    # redelivery after 3 (its first attempt died with an agent): not a violation.
    h.deliver("eu-west", "us-east-p1", 1, "us-east")
    h.deliver("eu-west", "us-east-p0", 1, "us-east")
    h.deliver("eu-west", "us-east-p1", 2, "us-east")
    h.deliver("eu-west", "us-east-p0", 3, "us-east")
    h.deliver("eu-west", "us-east-p0", 2, "us-east", attempt=2)
    h.deliver("eu-west", "us-east-p1", 3, "us-east")
    assert EventsOrderedChecker().check(h.history()).valid is True


def test_a_duplicate_delivery_is_caught() -> None:
    h = good().deliver("eu-west", "us-east-p0", 2, "us-east")
    v = EventsOnceChecker().check(h.history())
    assert v.valid is False
    assert v.errors[0]["problem"] == "a second copy delivered as new"


def test_a_redelivery_after_an_ack_on_a_healthy_stream_is_caught() -> None:
    h = good().deliver("eu-west", "us-east-p0", 2, "us-east", attempt=2)
    v = EventsOnceChecker().check(h.history())
    assert v.valid is False
    assert "stream that held" in v.errors[0]["problem"]


def test_a_redelivery_after_a_broken_stream_is_excused() -> None:
    h = H().publish("us-east-p0", 1, "us-east")
    h.deliver("eu-west", "us-east-p0", 1, "us-east", session=1)
    h.session(1, "info")  # the stream broke: the ack may never have been applied
    h.deliver("eu-west", "us-east-p0", 1, "us-east", session=2, attempt=2)
    h.session(2, "ok")
    v = EventsOnceChecker().check(h.history())
    assert v.valid is True
    assert v.details["excused_redeliveries"] == 1


def test_a_redelivery_as_new_after_a_broken_stream_is_excused() -> None:
    # The group's server died with the stream: JetStream lost the ack and its
    # delivery count, so the redelivery says attempt 1 again.
    h = H().publish("us-east-p0", 1, "us-east").publish("us-east-p0", 2, "us-east")
    h.deliver("eu-west", "us-east-p0", 1, "us-east", session=1)
    h.session(1, "info")
    h.deliver("eu-west", "us-east-p0", 1, "us-east", session=2)
    h.deliver("eu-west", "us-east-p0", 2, "us-east", session=2)
    h.session(2, "ok")
    once = EventsOnceChecker().check(h.history())
    assert once.valid is True, once.errors
    assert once.details["excused_redeliveries"] == 1
    assert EventsOrderedChecker().check(h.history()).valid is True


def test_two_copies_in_flight_as_new_are_caught() -> None:
    h = H().publish("us-east-p0", 1, "us-east")
    h.deliver("eu-west", "us-east-p0", 1, "us-east", session=1, end="fail")
    h.deliver("eu-west", "us-east-p0", 1, "us-east", session=2)
    h.session(1, "info").session(2, "ok")
    v = EventsOnceChecker().check(h.history())
    assert v.valid is False
    assert v.errors[0]["problem"] == "a second copy delivered as new"


def test_a_copy_never_acked_then_again_as_new_after_its_stream_broke_is_excused() -> None:
    # The ack of the first copy failed as the group's region was killed; the
    # server lost the delivery count with it, so the copy after the restart
    # says attempt 1 again (seen in the smoke suite's kill of eu-west).
    h = H().publish("us-east-p0", 1, "us-east")
    h.deliver("eu-west", "us-east-p0", 1, "us-east", session=1, end="fail")
    h.session(1, "info")
    h.deliver("eu-west", "us-east-p0", 1, "us-east", session=2)
    h.session(2, "ok")
    v = EventsOnceChecker().check(h.history())
    assert v.valid is True, v.errors
    assert v.details["excused_redeliveries"] == 1


def test_no_delivery_or_no_drain_is_unknown() -> None:
    h = H().publish("us-east-p0", 1, "us-east")
    assert checks(h.history()) == {
        "events-delivered": None,
        "events-expected": None,
        "events-ordered": None,
        "events-once": None,
    }
