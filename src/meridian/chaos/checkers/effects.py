"""Exactly one effect per idempotency key, and one response per key.

The idempotent-commands workload (:mod:`meridian.chaos.workloads.idempotency`)
records:

- ``command`` ops, keyed by idempotency key, sent by many clients (each attempt
  is its own op); an ok value is the response ``{"status", "body", ...}``;
- one final ``effects`` op whose ok value maps each key to what the system of
  record holds for it: a count, or the list of its effects' ids.

:class:`ExactlyOnceChecker` is valid iff no key has more than one effect, every
key with an ok command has exactly one, and no effect appears for a key never
invoked. A key whose commands all ended in info or fail may have zero or one.

:class:`SameResponseChecker` is valid iff, for every key, every ok command got
the identical response (status and body; ``replayed`` may differ), no command
was refused as a mismatch (every caller of a key sends the same request), and,
when the effects are listed by id, the response is the one naming the key's
effect (the body is the effect's id).
"""

from __future__ import annotations

from typing import Any

from meridian.chaos.checkers.verdict import Verdict
from meridian.chaos.history import History


def final_effects(history: History, prefix: str | None = None) -> dict[str, list[str]] | None:
    """The last ok ``effects`` read as ``{key: [effect id, ...]}``; counts become
    anonymous ids. None if there is none."""
    found: dict[str, list[str]] | None = None
    for op in history.ops():
        if op.f == "effects" and op.type == "ok" and isinstance(op.value, dict):
            found = {}
            for key, v in op.value.items():
                if prefix is not None and not str(key).startswith(prefix):
                    continue
                if isinstance(v, list):
                    found[str(key)] = [str(i) for i in v]
                else:
                    found[str(key)] = [f"#{i}" for i in range(int(v))]
    return found


class ExactlyOnceChecker:
    name = "exactly-once"

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix

    def check(self, history: History) -> Verdict:
        invoked: set[str] = set()
        acked: set[str] = set()
        for op in history.ops():
            if op.f != "command" or op.key is None:
                continue
            if self.prefix is not None and not op.key.startswith(self.prefix):
                continue
            invoked.add(op.key)
            if op.type == "ok":
                acked.add(op.key)
        effects = final_effects(history, self.prefix)
        if effects is None:
            return Verdict(self.name, None, "no final effects read")
        if not invoked:
            return Verdict(self.name, None, "no command was invoked")
        errors: list[dict[str, Any]] = []
        for key in sorted(set(effects) | acked):
            ids = effects.get(key, [])
            if len(ids) > 1:
                errors.append(
                    {"key": key, "problem": f"duplicated effect ({len(ids)})", "effects": ids}
                )
            elif key in acked and not ids:
                errors.append({"key": key, "problem": "acknowledged command has no effect"})
            elif key not in invoked and ids:
                errors.append({"key": key, "problem": "effect for a key never invoked"})
        with_effect = sum(1 for ids in effects.values() if ids)
        details = {"keys": len(invoked), "acknowledged": len(acked), "with_effect": with_effect}
        if errors:
            return Verdict(self.name, False, f"{len(errors)} key(s) broken", errors, details)
        return Verdict(
            self.name,
            True,
            f"{len(invoked)} keys, {with_effect} with their one effect, "
            f"{len(acked)} acknowledged ones each exactly once",
            [],
            details,
        )


class SameResponseChecker:
    name = "same-response"

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix

    def check(self, history: History) -> Verdict:
        responses: dict[str, dict[tuple[int, str], int]] = {}
        errors: list[dict[str, Any]] = []
        oks = replays = 0
        for op in history.ops():
            if op.f != "command" or op.key is None:
                continue
            if self.prefix is not None and not op.key.startswith(self.prefix):
                continue
            error = op.completion.error if op.completion else None
            if op.type == "fail" and error and "IdempotencyMismatch" in error:
                errors.append({"key": op.key, "region": op.region, "problem": error})
            if op.type != "ok" or not isinstance(op.value, dict):
                continue
            oks += 1
            replays += bool(op.value.get("replayed"))
            answer = (int(op.value.get("status", 0)), str(op.value.get("body", "")))
            seen = responses.setdefault(op.key, {})
            seen[answer] = seen.get(answer, 0) + 1
        effects = final_effects(history, self.prefix) or {}
        for key, seen in sorted(responses.items()):
            if len(seen) > 1:
                errors.append(
                    {
                        "key": key,
                        "problem": f"{len(seen)} different responses",
                        "responses": [[s, b, n] for (s, b), n in seen.items()],
                    }
                )
                continue
            ((_status, body),) = seen
            ids = effects.get(key)
            if ids and len(ids) == 1 and not ids[0].startswith("#") and body != ids[0]:
                errors.append(
                    {"key": key, "problem": f"response {body!r} is not the effect {ids[0]!r}"}
                )
        details = {"keys": len(responses), "ok": oks, "replayed": replays}
        if errors:
            return Verdict(self.name, False, f"{len(errors)} key(s) broken", errors, details)
        if oks == 0:
            return Verdict(self.name, None, "no command completed", [], details)
        return Verdict(
            self.name,
            True,
            f"{len(responses)} keys: each of {oks} ok callers ({replays} replays) got its "
            "key's one response",
            [],
            details,
        )
