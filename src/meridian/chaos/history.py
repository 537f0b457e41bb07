"""The history of a chaos run: one event per operation event, Jepsen style.

Every operation a client runs is recorded twice: an ``invoke`` event when it
starts, then exactly one completion when it ends:

- ``ok``: it took effect (or, for a read, returned what ``value`` says);
- ``fail``: it certainly did not take effect (a CAS conflict, a refused
  connection);
- ``info``: it may or may not have taken effect (a timeout, a lost
  connection). A process whose op ends in ``info`` never invokes again: the
  workload gives that client a new process number, because the old op may
  still be in flight.

``time`` is monotonic nanoseconds since the start of the run; ``wall_ns`` is
the wall clock at the same moment (used only to check HLC bounds). The JSON
form is ``{"schema": ..., "events": [...]}``, the format the Porcupine command
in ``tools/porcupine`` reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEMA = "meridian.chaos.history/1"

EventType = Literal["invoke", "ok", "fail", "info"]
EVENT_TYPES: tuple[str, ...] = ("invoke", "ok", "fail", "info")


@dataclass(frozen=True)
class Event:
    """One event of one operation."""

    index: int
    type: EventType
    process: int
    region: str
    f: str
    key: str | None
    value: Any
    time: int
    wall_ns: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if out["error"] is None:
            del out["error"]
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Event:
        if raw.get("type") not in EVENT_TYPES:
            raise ValueError(f"event {raw.get('index')}: type must be one of {EVENT_TYPES}")
        return cls(
            index=int(raw["index"]),
            type=raw["type"],
            process=int(raw["process"]),
            region=str(raw.get("region", "")),
            f=str(raw["f"]),
            key=raw.get("key"),
            value=raw.get("value"),
            time=int(raw["time"]),
            wall_ns=int(raw.get("wall_ns", 0)),
            error=raw.get("error"),
        )


@dataclass(frozen=True)
class Op:
    """An invoke paired with its completion; ``completion`` is None if the run ended first."""

    invoke: Event
    completion: Event | None

    @property
    def type(self) -> str:
        """ok, fail or info (an op never completed counts as info)."""
        return self.completion.type if self.completion else "info"

    @property
    def f(self) -> str:
        return self.invoke.f

    @property
    def key(self) -> str | None:
        return self.invoke.key

    @property
    def region(self) -> str:
        return self.invoke.region

    @property
    def value(self) -> Any:
        """The completion's value (what was read or done), else the invoke's."""
        if self.completion is not None and self.completion.value is not None:
            return self.completion.value
        return self.invoke.value

    @property
    def start(self) -> int:
        return self.invoke.time

    @property
    def end(self) -> int | None:
        return self.completion.time if self.completion else None


@dataclass
class History:
    """An append-only list of events, with a clock for recording live runs."""

    events: list[Event] = field(default_factory=list)
    t0_ns: int = field(default_factory=time.monotonic_ns)
    wall_t0_ns: int = field(default_factory=time.time_ns)

    def now(self) -> int:
        return time.monotonic_ns() - self.t0_ns

    def add(
        self,
        type_: EventType,
        process: int,
        region: str,
        f: str,
        key: str | None,
        value: Any = None,
        *,
        error: str | None = None,
        at: int | None = None,
    ) -> Event:
        """Append one event, timed now unless ``at`` is given."""
        event = Event(
            index=len(self.events),
            type=type_,
            process=process,
            region=region,
            f=f,
            key=key,
            value=value,
            time=self.now() if at is None else at,
            wall_ns=time.time_ns() if at is None else self.wall_t0_ns + at,
            error=error,
        )
        self.events.append(event)
        return event

    def ops(self) -> list[Op]:
        """Pair every invoke with its process's next completion, in invoke order.

        Raises ValueError if a process invokes twice without completing, or a
        completion has no invoke: such a history is malformed, not a verdict.
        """
        return pair(self.events)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "wall_t0_ns": self.wall_t0_ns,
            "events": [e.to_json() for e in self.events],
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> History:
        events = [Event.from_json(e) for e in raw.get("events", [])]
        return cls(events=events, t0_ns=0, wall_t0_ns=int(raw.get("wall_t0_ns", 0)))

    @classmethod
    def load(cls, path: Path) -> History:
        return cls.from_json(json.loads(path.read_text()))

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


def pair(events: Iterable[Event]) -> list[Op]:
    """See :meth:`History.ops`."""
    open_: dict[int, int] = {}
    ops: list[Op] = []
    for e in events:
        if e.type == "invoke":
            if e.process in open_:
                prev = ops[open_[e.process]].invoke
                raise ValueError(
                    f"event {e.index}: process {e.process} invoked again while event "
                    f"{prev.index} is open"
                )
            open_[e.process] = len(ops)
            ops.append(Op(e, None))
        else:
            if e.process not in open_:
                raise ValueError(f"event {e.index}: {e.type} without an invoke by {e.process}")
            i = open_.pop(e.process)
            ops[i] = Op(ops[i].invoke, e)
    return ops


def build(*rows: tuple[Any, ...]) -> History:
    """A hand-written history for tests: rows of ``(type, process, f, key, value, time)``
    with an optional seventh ``region`` and eighth ``wall_ns``."""
    h = History(t0_ns=0, wall_t0_ns=0)
    for row in rows:
        type_, process, f, key, value, at = row[:6]
        region = row[6] if len(row) > 6 else "r"
        wall = row[7] if len(row) > 7 else at
        h.events.append(
            Event(len(h.events), type_, process, region, f, key, value, at, wall_ns=wall)
        )
    return h
