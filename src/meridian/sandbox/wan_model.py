"""The pure model of the WAN emulator: latency matrix, partitions, delivery schedule.

No I/O here; :mod:`meridian.sandbox.wan` runs sockets on top of it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, get_args

from meridian.core.errors import FieldViolation, InvalidArgumentError

if TYPE_CHECKING:
    from meridian.sandbox.wan_tls import ProxyTls

MAX_LATENCY_MS: Final = 60_000.0
"""Largest one-way latency :class:`LatencyMatrix` accepts, in milliseconds."""
MAX_JITTER_MS: Final = 10_000.0
"""Largest jitter :class:`LatencyMatrix` accepts, in milliseconds."""

Direction = Literal["both", "outbound", "inbound"]
_DIRECTIONS: Final[tuple[str, ...]] = get_args(Direction)

Pair = tuple[str, str]


class WanArgumentError(InvalidArgumentError, ValueError):
    """A WAN emulator argument broke a rule. Names the field and the rule; nothing changed."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(FieldViolation(field, rule))


def check_region(regions: Sequence[str], field: str, value: object) -> str:
    if not isinstance(value, str):
        raise WanArgumentError(field, f"must be a region name (string), got {type(value).__name__}")
    if value not in regions:
        raise WanArgumentError(
            field, f"unknown region {value!r}; known regions are {', '.join(regions)}"
        )
    return value


def _check_ms(field: str, value: object, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WanArgumentError(
            field, f"must be a number of milliseconds, got {type(value).__name__}"
        )
    ms = float(value)
    if not math.isfinite(ms) or ms < 0 or ms > maximum:
        raise WanArgumentError(field, f"must be >= 0 and <= {maximum:g} ms, got {value!r}")
    return ms


def _check_pair(regions: Sequence[str], field: str, key: object) -> Pair:
    if not (isinstance(key, tuple) and len(key) == 2):
        raise WanArgumentError(field, f"keys must be (src, dst) region pairs, got {key!r}")
    src = check_region(regions, field, key[0])
    dst = check_region(regions, field, key[1])
    if src == dst:
        raise WanArgumentError(field, f"src and dst must differ, got {src!r} twice")
    return src, dst


def _symmetric(
    regions: Sequence[str], name: str, given: Mapping[Pair, float], maximum: float
) -> dict[Pair, float]:
    """Validate ``given``; a missing reverse direction copies the given one."""
    out: dict[Pair, float] = {}
    for key, value in given.items():
        src, dst = _check_pair(regions, name, key)
        out[(src, dst)] = _check_ms(f"{name}[{src}->{dst}]", value, maximum)
    for (src, dst), value in list(out.items()):
        out.setdefault((dst, src), value)
    return out


class LatencyMatrix:
    """One-way latency and jitter, in milliseconds, for each ordered pair of regions.

    Pure: no I/O and no clock. Pairs not given default to 0 ms; a pair given in
    one direction only applies to both. Latency is within
    ``[0, MAX_LATENCY_MS]``; jitter is within ``[0, MAX_JITTER_MS]`` and may
    exceed the latency (the sampled delay is then clamped at 0).

    Raises:
        WanArgumentError: an unknown or duplicate region, a pair of a region
            with itself, or an out-of-range value. The message names it.
    """

    def __init__(
        self,
        regions: Sequence[str],
        latency_ms: Mapping[Pair, float],
        jitter_ms: Mapping[Pair, float] | float = 0.0,
    ) -> None:
        if isinstance(regions, str):
            raise WanArgumentError("regions", "must be a list of region names, not one string")
        names = tuple(regions)
        if not names:
            raise WanArgumentError("regions", "must name at least one region")
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise WanArgumentError(f"regions[{i}]", f"must be a non-empty string, got {name!r}")
            if name in names[:i]:
                raise WanArgumentError(f"regions[{i}]", f"duplicate region {name!r}")
        self._regions = names
        lat = _symmetric(names, "latency_ms", latency_ms, MAX_LATENCY_MS)
        if isinstance(jitter_ms, Mapping):
            jit = _symmetric(names, "jitter_ms", jitter_ms, MAX_JITTER_MS)
            default_jitter = 0.0
        else:
            default_jitter = _check_ms("jitter_ms", jitter_ms, MAX_JITTER_MS)
            jit = {}
        self._latency = {p: lat.get(p, 0.0) for p in self.pairs()}
        self._jitter = {p: jit.get(p, default_jitter) for p in self.pairs()}

    @property
    def regions(self) -> tuple[str, ...]:
        """The regions, in the order given."""
        return self._regions

    def pairs(self) -> Iterable[Pair]:
        """Every ordered pair of distinct regions."""
        return ((a, b) for a in self._regions for b in self._regions if a != b)

    def latency(self, src: str, dst: str) -> float:
        """One-way latency from ``src`` to ``dst`` in ms. Raises WanArgumentError if unknown."""
        return self._latency[self._pair(src, dst)]

    def jitter(self, src: str, dst: str) -> float:
        """Jitter from ``src`` to ``dst`` in ms (delay is uniform in latency ± jitter)."""
        return self._jitter[self._pair(src, dst)]

    def set(
        self,
        a: str,
        b: str,
        latency_ms: float,
        jitter_ms: float | None = None,
        *,
        one_way: bool = False,
    ) -> None:
        """Set the latency from ``a`` to ``b``, and from ``b`` to ``a`` unless ``one_way``.

        ``jitter_ms=None`` keeps the current jitter. All arguments are
        validated before anything changes.
        """
        src, dst = self._pair(a, b, fields=("a", "b"))
        latency = _check_ms("latency_ms", latency_ms, MAX_LATENCY_MS)
        jitter = None if jitter_ms is None else _check_ms("jitter_ms", jitter_ms, MAX_JITTER_MS)
        if not isinstance(one_way, bool):
            raise WanArgumentError("one_way", f"must be a boolean, got {type(one_way).__name__}")
        for pair in [(src, dst)] if one_way else [(src, dst), (dst, src)]:
            self._latency[pair] = latency
            if jitter is not None:
                self._jitter[pair] = jitter

    def as_dict(self, partitions: PartitionTable | None = None) -> dict[str, object]:
        """JSON-friendly view; ``blocked`` comes from ``partitions`` (False without one)."""
        return {
            "regions": list(self._regions),
            "links": [
                {
                    "src": src,
                    "dst": dst,
                    "latency_ms": self._latency[(src, dst)],
                    "jitter_ms": self._jitter[(src, dst)],
                    "blocked": partitions is not None and partitions.blocked(src, dst),
                }
                for src, dst in self.pairs()
            ],
        }

    def _pair(self, a: object, b: object, fields: tuple[str, str] = ("src", "dst")) -> Pair:
        src = check_region(self._regions, fields[0], a)
        dst = check_region(self._regions, fields[1], b)
        if src == dst:
            raise WanArgumentError(fields[1], f"must differ from {fields[0]} ({src!r})")
        return src, dst


class PartitionTable:
    """A set of blocked directed ``(src, dst)`` region pairs. Pure: no I/O.

    Blocking is per direction: ``blocked(src, dst)`` means bytes sent by a
    ``src`` server towards a ``dst`` server are lost.
    """

    def __init__(self, regions: Sequence[str]) -> None:
        self._regions = tuple(regions)
        self._blocked: set[Pair] = set()

    def partition(
        self,
        region: str,
        *,
        peers: Sequence[str] | None = None,
        direction: Direction = "both",
    ) -> None:
        """Cut ``region`` off from ``peers`` (default: every other region).

        ``outbound`` drops traffic sent by ``region`` to the peers, ``inbound``
        drops traffic the peers send to ``region``, ``both`` drops both.
        Partitions add up; :meth:`heal` removes them. Validates every argument
        before changing anything.
        """
        region = check_region(self._regions, "region", region)
        if direction not in _DIRECTIONS:
            raise WanArgumentError(
                "direction", f"must be one of {', '.join(_DIRECTIONS)}, got {direction!r}"
            )
        if peers is None:
            targets = [r for r in self._regions if r != region]
        else:
            if isinstance(peers, str) or not isinstance(peers, Sequence):
                raise WanArgumentError("peers", "must be a list of region names or null")
            if not peers:
                raise WanArgumentError("peers", "must name at least one region, or be null for all")
            targets = []
            for i, peer in enumerate(peers):
                name = check_region(self._regions, f"peers[{i}]", peer)
                if name == region:
                    raise WanArgumentError(f"peers[{i}]", f"must differ from region ({region!r})")
                targets.append(name)
        for peer in targets:
            if direction in ("both", "outbound"):
                self._blocked.add((region, peer))
            if direction in ("both", "inbound"):
                self._blocked.add((peer, region))

    def heal(self, region: str | None = None) -> None:
        """Unblock every pair touching ``region``, or every pair when ``None``."""
        if region is None:
            self._blocked.clear()
            return
        region = check_region(self._regions, "region", region)
        self._blocked = {p for p in self._blocked if region not in p}

    def blocked(self, src: str, dst: str) -> bool:
        """True when bytes from ``src`` to ``dst`` are being dropped."""
        return (src, dst) in self._blocked

    def as_list(self) -> list[dict[str, str]]:
        """The blocked pairs, sorted, as ``[{"src", "dst"}, ...]``."""
        return [{"src": s, "dst": d} for s, d in sorted(self._blocked)]


class DeliverySchedule:
    """Delivery times for one direction of one connection. Pure.

    Each chunk is due at ``arrival + delay`` where ``delay`` is uniform in
    ``latency ± jitter`` clamped at 0, and never before the previous chunk's
    due time, so bytes are never reordered.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._last = -math.inf

    def next(self, arrival: float, latency_ms: float, jitter_ms: float) -> float:
        """Due time, in the same unit as ``arrival`` (seconds), of a chunk arriving now."""
        delay_ms = latency_ms
        if jitter_ms > 0:
            delay_ms += self._rng.uniform(-jitter_ms, jitter_ms)
        due = max(self._last, arrival + max(0.0, delay_ms) / 1000.0)
        self._last = due
        return due


@dataclass(frozen=True)
class ProxySpec:
    """One emulated WAN link.

    ``src`` servers dial ``listen_host:listen_port``; the proxy forwards to
    ``upstream_host:upstream_port`` in ``dst``. ``listen_port=0`` binds a
    free port; read it with :meth:`WanEmulator.bound_port`.
    """

    name: str
    src: str
    dst: str
    listen_port: int
    upstream_host: str
    upstream_port: int
    listen_host: str = "127.0.0.1"
    #: Remove address gossip from NATS INFO messages (see meridian.sandbox.gossip).
    strip_gossip: bool = False
    #: Terminate mutual TLS on both sides (meridian.sandbox.wan_tls); None: plain TCP.
    tls: ProxyTls | None = None
