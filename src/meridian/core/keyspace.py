"""Keyspaces: where data lives, how conflicts resolve, and what keys and values may be.

A keyspace is declared in configuration with a locality (DESIGN §3):

- ``global``: an R3 bucket in the stretched ``global`` cluster, one replica per
  region; linearizable per key, writes need a quorum of regions;
- ``replicated``: accepted in every region and merged;
- ``regional``: a home region per partition (a key's first segment); writes
  go to the home region's stream, other allowed regions hold read-only copies.

A ``replicated`` or ``regional`` keyspace may carry a *residency*: the regions
allowed to store and serve its data (:mod:`meridian.core.residency`).

The validation rules here are the ones the State API enforces before anything
is written; each violation names the field and the rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from meridian.core.errors import FieldViolation, InvalidArgumentError

KEYSPACE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")
#: Keys are NATS subject tokens joined by "." : letters, digits and - _ / = .
KEY_CHARS = re.compile(r"[A-Za-z0-9_\-/=.]+")
RESERVED_KEY_PREFIX = "_meridian"
DEFAULT_KEY_MAX_BYTES = 1024
DEFAULT_VALUE_MAX_BYTES = 1 << 20


class Locality(Enum):
    GLOBAL = "global"
    REPLICATED = "replicated"
    REGIONAL = "regional"


class ConflictPolicy(Enum):
    LWW = "lww"
    COUNTER = "counter"
    SET = "set"
    MULTI_VALUE = "multi_value"


@dataclass(frozen=True)
class Keyspace:
    """A declared keyspace and its limits."""

    name: str
    locality: Locality = Locality.GLOBAL
    conflict: ConflictPolicy = ConflictPolicy.LWW
    key_max_bytes: int = DEFAULT_KEY_MAX_BYTES
    value_max_bytes: int = DEFAULT_VALUE_MAX_BYTES
    #: Changes kept per key (``global``; NATS KV allows at most 64).
    history: int = 64
    #: Entries older than this are removed by JetStream (0: kept for ever).
    ttl_s: float = 0.0
    #: The regions that may store and serve this keyspace; None: every region.
    residency: tuple[str, ...] | None = None
    #: ``regional``: the home of a new partition first written from a region
    #: that is not allowed to be its home (None: the first allowed region).
    home: str | None = None
    #: ``regional``: an agent outside the residency forwards reads and writes
    #: to the home region (True) or refuses them with RESIDENCY_VIOLATION.
    forward: bool = False

    def allowed(self, region: str) -> bool:
        """Whether ``region`` may store and serve this keyspace's data."""
        return not self.residency or region in self.residency

    @property
    def bucket(self) -> str:
        """The JetStream KV bucket that stores a ``global`` keyspace."""
        return f"mg_{self.name}"


class ReadLevel(Enum):
    STRONG = "strong"
    BOUNDED = "bounded"
    EVENTUAL = "eventual"


@dataclass(frozen=True)
class Consistency:
    """The consistency a read asks for. BOUNDED needs ``max_staleness_s`` > 0."""

    level: ReadLevel = ReadLevel.STRONG
    max_staleness_s: float = 0.0

    def __post_init__(self) -> None:
        if self.level is ReadLevel.BOUNDED and not self.max_staleness_s > 0:
            raise InvalidArgumentError(
                FieldViolation(
                    "consistency.max_staleness", "BOUNDED reads need a max_staleness above zero"
                )
            )
        if self.max_staleness_s < 0:
            raise InvalidArgumentError(
                FieldViolation("consistency.max_staleness", "must not be negative")
            )


def key_violations(key: object, max_bytes: int, field: str = "key") -> list[FieldViolation]:
    """Every rule ``key`` breaks (empty when it is valid)."""
    if not isinstance(key, str):
        return [FieldViolation(field, "must be a string")]
    out: list[FieldViolation] = []
    size = len(key.encode("utf-8", errors="surrogatepass"))
    if size == 0:
        out.append(FieldViolation(field, "must not be empty"))
    elif size > max_bytes:
        out.append(FieldViolation(field, f"is {size} bytes; at most {max_bytes} bytes allowed"))
    elif not KEY_CHARS.fullmatch(key):
        out.append(
            FieldViolation(field, "may only contain letters, digits and the characters - _ / = .")
        )
    elif key.startswith(".") or key.endswith(".") or ".." in key:
        out.append(FieldViolation(field, "must not start or end with '.' or contain '..'"))
    elif key.startswith(RESERVED_KEY_PREFIX):
        out.append(
            FieldViolation(field, f"keys starting with {RESERVED_KEY_PREFIX!r} are reserved")
        )
    return out


def key_prefix_violations(prefix: object, max_bytes: int) -> list[FieldViolation]:
    """Rules for a scan prefix: like a key, but may be empty or end in '.'."""
    if prefix == "":
        return []
    if isinstance(prefix, str) and prefix.endswith("."):
        prefix = prefix[:-1]
        if prefix == "":
            return [FieldViolation("prefix", "must not be only '.'")]
    return key_violations(prefix, max_bytes, field="prefix")


def value_violations(value: object, max_bytes: int) -> list[FieldViolation]:
    if not isinstance(value, bytes):
        return [FieldViolation("value", "must be bytes")]
    if len(value) > max_bytes:
        return [
            FieldViolation("value", f"is {len(value)} bytes; at most {max_bytes} bytes allowed")
        ]
    return []


def check(violations: list[FieldViolation]) -> None:
    """Raise :class:`InvalidArgumentError` if there is any violation."""
    if violations:
        raise InvalidArgumentError(violations)
