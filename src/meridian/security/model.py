"""Workload identities and certificate lifetimes, as pure rules (no I/O).

An identity is a SPIFFE ID, carried as the URI SAN of its certificate::

    spiffe://<trust-domain>/region/<region>/agent     a region's agent
    spiffe://<trust-domain>/service/<name>            a Go or Rust service
    spiffe://<trust-domain>/gateway                   the global front door
    spiffe://<trust-domain>/nats/<server>             a NATS server
    spiffe://<trust-domain>/operator/<name>           a person or tool (the CLI)

Names follow the rules of the rest of Meridian (a region or service name is
1-63 characters of a-z, 0-9 and '-', starting with a letter), so an identity
is also a safe file name (:attr:`Identity.slug`).

A leaf is renewed at half its lifetime and reported as expiring once less than
a fifth of it is left: with 24 h leaves, renewal starts 12 h before expiry and
``meridian ca status`` warns from 4.8 h before, while everything still works.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from meridian.core.errors import FieldViolation, InvalidArgumentError

#: A trust domain: a DNS-like name (SPIFFE: lowercase letters, digits, '.', '-', '_').
TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?\Z")
#: A region, service, server or operator name.
NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")
SCHEME = "spiffe://"
#: SPIFFE caps an ID at 2048 bytes; ours are far shorter.
MAX_ID_BYTES = 2048

DEFAULT_LEAF_LIFETIME_S = 24 * 3600
#: Short enough for rotation tests; anything shorter can't be renewed in time.
MIN_LEAF_LIFETIME_S = 2
MAX_LEAF_LIFETIME_S = 397 * 24 * 3600
DEFAULT_ROOT_LIFETIME_S = 10 * 365 * 24 * 3600
#: A leaf is renewed once this share of its lifetime has passed.
RENEW_AT = 0.5
#: A leaf is reported as expiring once less than this share of it is left.
WARN_AT = 0.2


class Kind(StrEnum):
    AGENT = "agent"
    SERVICE = "service"
    GATEWAY = "gateway"
    NATS = "nats"
    OPERATOR = "operator"


#: The subject common name of every NATS server's leaf. NATS maps a route's
#: or a gateway's certificate to one user per cluster (``verify_and_map``),
#: matched against a SAN or the subject; it cannot match a SPIFFE ID prefix,
#: so servers share this subject (``CN=nats-server,O=Meridian``) while the
#: URI SAN keeps each server's own identity. The CA gives it to no one else.
NATS_SERVER_CN = "nats-server"
NATS_SERVER_SUBJECT = f"CN={NATS_SERVER_CN},O=Meridian"


@dataclass(frozen=True, order=True)
class Identity:
    trust_domain: str
    kind: Kind
    #: The region (agent), service, server (nats) or operator name; "" for the gateway.
    name: str = ""

    def __post_init__(self) -> None:
        violations = []
        if not TRUST_DOMAIN.match(self.trust_domain):
            violations.append(
                FieldViolation(
                    "trust_domain",
                    "must be 1-255 characters of a-z, 0-9, '.', '-' and '_', "
                    "starting and ending with a letter or digit",
                )
            )
        if self.kind is Kind.GATEWAY:
            if self.name:
                violations.append(FieldViolation("identity", "the gateway identity has no name"))
        elif not NAME.match(self.name):
            violations.append(
                FieldViolation(
                    "identity",
                    f"a {self.kind.value} name must be 1-63 characters of a-z, 0-9 and '-', "
                    "starting with a letter",
                )
            )
        if violations:
            raise InvalidArgumentError(violations)

    @property
    def uri(self) -> str:
        td = f"{SCHEME}{self.trust_domain}"
        if self.kind is Kind.AGENT:
            return f"{td}/region/{self.name}/agent"
        if self.kind is Kind.GATEWAY:
            return f"{td}/gateway"
        return f"{td}/{self.kind.value}/{self.name}"

    @property
    def slug(self) -> str:
        """A file name for the identity: ``agent-us-east``, ``service-orders``, ``gateway``."""
        return self.kind.value if self.kind is Kind.GATEWAY else f"{self.kind.value}-{self.name}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str, *, field: str = "identity") -> Identity:
        """The identity a SPIFFE ID names; InvalidArgumentError naming ``field``
        and the rule for anything else (other schemes, query, fragment, port,
        user info, percent-encoding, dot segments, unknown paths)."""
        shown = uri[:80] + ("..." if len(uri) > 80 else "")
        if len(uri.encode()) > MAX_ID_BYTES or not uri.startswith(SCHEME):
            raise InvalidArgumentError(
                FieldViolation(field, f"must be a spiffe:// ID of at most {MAX_ID_BYTES} bytes")
            )
        rest = uri[len(SCHEME) :]
        td, _, path = rest.partition("/")
        if any(c in rest for c in "?#%@:") or not path:
            raise InvalidArgumentError(
                FieldViolation(
                    field,
                    "must be spiffe://<trust-domain>/<path> with no port, user, query, "
                    f"fragment or percent-encoding; got {shown!r}",
                )
            )
        parts = path.split("/")
        try:
            if len(parts) == 3 and parts[0] == "region" and parts[2] == "agent":
                return cls(td, Kind.AGENT, parts[1])
            if parts == ["gateway"]:
                return cls(td, Kind.GATEWAY)
            if len(parts) == 2 and parts[0] in (Kind.SERVICE, Kind.NATS, Kind.OPERATOR):
                return cls(td, Kind(parts[0]), parts[1])
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(
                [FieldViolation(field, f"{v.rule}; got {shown!r}") for v in exc.violations]
            ) from None
        raise InvalidArgumentError(
            FieldViolation(
                field,
                "must be one of /region/<region>/agent, /service/<name>, /gateway, "
                f"/nats/<server>, /operator/<name>; got {shown!r}",
            )
        )

    @classmethod
    def from_spec(cls, trust_domain: str, spec: str) -> Identity:
        """An identity from the CLI's short form (``agent/us-east``,
        ``service/orders``, ``gateway``, ``nats/us-east-1``, ``operator/alice``)
        or a full spiffe:// ID in ``trust_domain``."""
        if spec.startswith(SCHEME):
            ident = cls.parse(spec)
            if ident.trust_domain != trust_domain:
                raise InvalidArgumentError(
                    FieldViolation(
                        "identity",
                        f"is in trust domain {ident.trust_domain!r}, not {trust_domain!r}",
                    )
                )
            return ident
        kind, _, name = spec.partition("/")
        if kind not in Kind.__members__.values() or "/" in name:
            raise InvalidArgumentError(
                FieldViolation(
                    "identity",
                    "must be agent/<region>, service/<name>, gateway, nats/<server>, "
                    f"operator/<name> or a spiffe:// ID; got {spec[:80]!r}",
                )
            )
        return cls(trust_domain, Kind(kind), name)


@dataclass(frozen=True)
class Validity:
    """A certificate's validity window, in seconds since the epoch."""

    not_before: float
    not_after: float

    @property
    def lifetime_s(self) -> float:
        return self.not_after - self.not_before

    def renew_at(self) -> float:
        return self.not_before + RENEW_AT * self.lifetime_s

    def warn_at(self) -> float:
        return self.not_after - WARN_AT * self.lifetime_s

    def state(self, now: float) -> str:
        """``not-yet-valid``, ``ok``, ``renew`` (past half-life), ``expiring``
        (under a fifth left) or ``expired``."""
        if now < self.not_before:
            return "not-yet-valid"
        if now >= self.not_after:
            return "expired"
        if now >= self.warn_at():
            return "expiring"
        if now >= self.renew_at():
            return "renew"
        return "ok"


def lifetime_violations(seconds: float, field: str = "lifetime") -> list[FieldViolation]:
    if not MIN_LEAF_LIFETIME_S <= seconds <= MAX_LEAF_LIFETIME_S:
        return [
            FieldViolation(
                field, f"must be {MIN_LEAF_LIFETIME_S} s to {MAX_LEAF_LIFETIME_S // 86400} days"
            )
        ]
    return []


_DURATION = re.compile(r"^([0-9]{1,9})(s|m|h|d)\Z")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, field: str = "lifetime") -> int:
    """``90s``, ``15m``, ``24h``, ``30d`` as seconds; InvalidArgumentError otherwise."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise InvalidArgumentError(
            FieldViolation(
                field, f"must be a whole number and one of s, m, h, d; got {text[:40]!r}"
            )
        )
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def droppable_roots(trusted: set[str], current: str, leaf_issuers: dict[str, str]) -> set[str]:
    """The old roots that may leave the trust bundle: every root but ``current``
    once no leaf (identity -> the fingerprint of the root that issued it) still
    hangs from one of them. Empty while any leaf does."""
    old = trusted - {current}
    if any(issuer in old for issuer in leaf_issuers.values()):
        return set()
    return old
