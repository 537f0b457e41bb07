"""Idempotent commands: one effect per key and one response per key, on hand-written
histories; each known-bad one must fail."""

from __future__ import annotations

import dataclasses
from typing import Any

from meridian.chaos.checkers.effects import ExactlyOnceChecker, SameResponseChecker
from meridian.chaos.history import History, build


def history(
    commands: list[tuple[str, str, Any]], effects: dict[str, Any], error: str | None = None
) -> History:
    """``commands``: (key, completion type, response body or None)."""
    rows: list[tuple[Any, ...]] = []
    t = 0
    for p, (key, kind, body) in enumerate(commands):
        value = {"status": 201, "body": body, "replayed": p > 0} if kind == "ok" else None
        rows += [
            ("invoke", p, "command", key, {"request": "{}"}, t),
            (kind, p, "command", key, value, t + 1),
        ]
        t += 2
    rows += [("invoke", 99, "effects", None, None, t), ("ok", 99, "effects", None, effects, t + 1)]
    h = build(*rows)
    if error is not None:  # the completion of the first command carries it
        events = list(h.events)
        events[1] = dataclasses.replace(events[1], error=error)
        h = History(events, t0_ns=0, wall_t0_ns=0)
    return h


GOOD = [
    ("k1", "ok", "7@us-east"),
    ("k1", "ok", "7@us-east"),  # a replay in another region
    ("k1", "fail", None),  # IN_PROGRESS while the first ran
    ("k2", "info", None),  # may or may not have run
    ("k3", "ok", "2@ap-south"),
]


def test_one_effect_and_one_response_per_key_is_valid() -> None:
    h = history(GOOD, {"k1": ["7@us-east"], "k3": ["2@ap-south"]})
    assert ExactlyOnceChecker().check(h).valid is True
    v = SameResponseChecker().check(h)
    assert v.valid is True, v
    assert v.details == {"keys": 2, "ok": 3, "replayed": 2}


def test_a_duplicated_effect_listed_by_id_is_invalid() -> None:
    h = history(GOOD, {"k1": ["7@us-east", "9@eu-west"], "k3": ["2@ap-south"]})
    v = ExactlyOnceChecker().check(h)
    assert v.valid is False
    assert v.errors == [
        {"key": "k1", "problem": "duplicated effect (2)", "effects": ["7@us-east", "9@eu-west"]}
    ]


def test_different_responses_for_one_key_are_invalid() -> None:
    commands = [*GOOD, ("k3", "ok", "5@eu-west")]
    h = history(commands, {"k1": ["7@us-east"], "k3": ["2@ap-south"]})
    v = SameResponseChecker().check(h)
    assert v.valid is False
    assert v.errors[0]["key"] == "k3"
    assert v.errors[0]["problem"] == "2 different responses"


def test_a_response_that_is_not_the_keys_effect_is_invalid() -> None:
    # Every caller agrees, but on a run whose effect is not the one that stayed.
    h = history(GOOD, {"k1": ["8@eu-west"], "k3": ["2@ap-south"]})
    v = SameResponseChecker().check(h)
    assert v.valid is False
    assert "is not the effect" in v.errors[0]["problem"]


def test_a_mismatch_for_the_same_request_is_invalid() -> None:
    # Every caller of a key sends the same request: a mismatch is the store's fault.
    commands = [("k1", "fail", None), *GOOD]
    error = "IdempotencyMismatchError: idempotency key 'k1' was used with a different request"
    h = history(commands, {"k1": ["7@us-east"], "k3": ["2@ap-south"]}, error=error)
    v = SameResponseChecker().check(h)
    assert v.valid is False
    assert v.errors[0]["key"] == "k1"


def test_prefix_keeps_other_runs_out() -> None:
    h = history(GOOD, {"k1": ["7@us-east"], "k3": ["2@ap-south"], "other-1": ["1@x", "2@y"]})
    assert ExactlyOnceChecker("k").check(h).valid is True
    assert ExactlyOnceChecker().check(h).valid is False


def test_no_ok_command_is_unknown() -> None:
    h = history([("k1", "info", None)], {})
    assert SameResponseChecker().check(h).valid is None
