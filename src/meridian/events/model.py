"""Events: names, limits, subjects and redelivery rules (DESIGN §4).

Everything here is pure. The agent maps an event to JetStream like this:

- a region's own stream ``EV_<region>`` holds what it published, on subjects
  ``mev.<region>.<topic>``; the event id travels as ``Nats-Msg-Id`` so
  JetStream drops a republish inside its duplicate window;
- every region's aggregate ``EVA_<region>`` sources every own stream, so a
  consumer group there sees the events of all regions;
- a consumer group is a durable pull consumer on the aggregate, filtered by
  ``mev.*.<topic_filter>``;
- after ``max_deliveries`` attempts an event moves to ``EVDLQ_<region>``.

A *resident* topic (its first token declared in ``[[topic]]`` with a
residency) travels apart, so that it is stored only in allowed regions:

- an allowed region publishes it to ``EVR_<region>``, on ``mevr.<region>.<topic>``;
  a region outside its residency refuses to publish or serve it;
- the aggregate of region ``r`` sources ``EVR_<s>`` once per topic allowed in
  both ``r`` and ``s``, with subject transforms that turn ``mevr.<s>.<topic>``
  back into ``mev.<s>.<topic>``: the transforms are also the filter, so other
  topics of ``EVR_<s>`` never reach ``r``, and consumer groups, replays and
  dead letters see the usual subjects.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from meridian.core.endpoints import SANDBOX, EndpointPolicy, host_violations
from meridian.core.errors import FieldViolation
from meridian.core.residency import TopicResidency, refuse, topic_residency

TOPIC_TOKEN = re.compile(r"[a-z0-9_-]{1,64}")
FILTER_TOKEN = re.compile(r"[a-z0-9_-]{1,64}|\*|>")
GROUP = re.compile(r"[a-z0-9_-]{1,64}")
NAMESPACE = re.compile(r"[a-z0-9_-]{1,64}")
PRINTABLE = re.compile(r"[\x20-\x7e]+")
HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
MAX_TOPIC_CHARS = 255
MAX_TOPIC_TOKENS = 16
MAX_KEY_CHARS = 255
MAX_EVENT_ID_CHARS = 128
MAX_PAYLOAD_BYTES = 1 << 20
MAX_HEADERS = 32
MAX_HEADER_BYTES = 8 * 1024
MAX_INVALIDATE_KEYS = 1000
DEFAULT_MAX_IN_FLIGHT = 64
MAX_IN_FLIGHT = 1024
DEFAULT_MAX_DELIVERIES = 5
MAX_DELIVERIES = 100
DEFAULT_ACK_WAIT_S = 30.0
MAX_ACK_WAIT_S = 3600.0
#: Consumer groups one identity may create on one stream (a topic's or a
#: keyspace's): each is a durable JetStream consumer the servers keep for good.
MAX_GROUPS_PER_IDENTITY = 256
#: The consumer metadata key naming the identity that created a group.
OWNER_METADATA = "meridian-owner"
#: Redelivery backoff after a nack: base x 2^(attempt-1), capped.
BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 30.0
#: Header names the agent sets itself.
RESERVED_HEADER_PREFIXES = ("nats-", "meridian-")
INVALIDATE_TOPIC = "_invalidate"
STATE_TOPIC = "_state"

SUBJECT_PREFIX = "mev"
RESIDENT_SUBJECT_PREFIX = "mevr"
DLQ_SUBJECT_PREFIX = "mevdlq"


def own_stream(region: str) -> str:
    return f"EV_{region}"


def aggregate_stream(region: str) -> str:
    return f"EVA_{region}"


def dlq_stream(region: str) -> str:
    return f"EVDLQ_{region}"


def resident_stream(region: str) -> str:
    """The stream of resident topics' events published in ``region``."""
    return f"EVR_{region}"


def subject(region: str, topic: str) -> str:
    return f"{SUBJECT_PREFIX}.{region}.{topic}"


def resident_subject(region: str, topic: str) -> str:
    """The subject of a resident topic's event published in ``region``."""
    return f"{RESIDENT_SUBJECT_PREFIX}.{region}.{topic}"


def split_subject(subj: str) -> tuple[str, str]:
    """(origin region, topic) of an event subject."""
    _, region, topic = subj.split(".", 2)
    return region, topic


def filter_subject(topic_filter: str) -> str:
    """The aggregate-stream subject filter of a topic filter, for every origin region."""
    return f"{SUBJECT_PREFIX}.*.{topic_filter}"


def consumer_name(group: str, source: str) -> str:
    """The durable consumer of ``group`` for one source (topic filter or keyspace).

    A group may consume several sources; each gets its own consumer, named by
    the group and a short hash of the source so names stay valid and distinct.
    """
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return f"{group}__{digest}"


def inbox_key(group: str, event_id: str) -> str:
    """The key in a region's inbox bucket recording that ``group`` processed ``event_id``."""
    return f"{group}.{hashlib.sha256(event_id.encode()).hexdigest()}"


def backoff_s(attempt: int) -> float:
    """Delay before redelivering after the ``attempt``-th delivery was nacked."""
    return float(min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** max(0, min(attempt - 1, 30))))


def dead_letter(attempt: int, max_deliveries: int) -> bool:
    """Whether a delivery that is about to be (re)delivered as ``attempt`` goes to
    the dead-letter stream instead."""
    return attempt > max_deliveries


# -- residency ------------------------------------------------------------------


def declared(topics: Iterable[TopicResidency], topic: str) -> TopicResidency | None:
    """The ``[[topic]]`` declaration covering ``topic`` (by its first token).

    Meridian's own topics (``_invalidate``, ``_state``) are never resident:
    cache invalidations and change feeds must reach every region."""
    if topic.startswith("_"):
        return None
    return topic_residency(topics, topic)


def publish_subject(
    topics: Iterable[TopicResidency], region: str, topic: str, field: str = "topic"
) -> str:
    """The subject an event of ``topic`` published in ``region`` goes to.

    Raises ResidencyViolationError naming ``field`` when ``topic`` is resident
    and ``region`` is not in its residency: nothing may be written then."""
    decl = declared(topics, topic)
    if decl is None:
        return subject(region, topic)
    if not decl.allowed(region):
        raise refuse(
            f"{field} {topic!r}: events of [[topic]] {decl.name!r}", region, decl.residency
        )
    return resident_subject(region, topic)


def check_served(topics: Iterable[TopicResidency], region: str, topic_filter: str) -> None:
    """Raise ResidencyViolationError when ``topic_filter`` names a resident topic
    (a literal first token) that ``region`` may not serve.

    A wildcard first token is fine anywhere: a region's aggregate never holds
    the events of topics it may not serve, so such a group simply never sees them."""
    decl = declared(topics, topic_filter)
    if decl is not None and not decl.allowed(region):
        raise refuse(
            f"topic_filter {topic_filter!r}: events of [[topic]] {decl.name!r}",
            region,
            decl.residency,
        )


def holds_resident_stream(topics: Iterable[TopicResidency], region: str) -> bool:
    """Whether ``region`` has a resident stream: some declared topic allows it."""
    return any(not t.name.startswith("_") and t.allowed(region) for t in topics)


@dataclass(frozen=True)
class ResidentSource:
    """One source of an aggregate: ``topic``'s events from ``origin``'s resident stream.

    One source per topic, not one per origin with every topic's transforms:
    JetStream restarts a source from its first message when its transforms
    change, so adding a topic to the declarations would copy every other
    resident topic's events into the aggregate again. A source of its own
    starts for the new topic alone and leaves the others where they are."""

    origin: str
    topic: str

    @property
    def stream(self) -> str:
        return resident_stream(self.origin)

    @property
    def transforms(self) -> tuple[tuple[str, str], ...]:
        """(source subject, aggregate subject) pairs; together they are the filter."""
        return (
            (resident_subject(self.origin, self.topic), subject(self.origin, self.topic)),
            (
                resident_subject(self.origin, f"{self.topic}.>"),
                subject(self.origin, f"{self.topic}.>"),
            ),
        )


def resident_sources(
    topics: Iterable[TopicResidency], region: str, origins: Sequence[str]
) -> list[ResidentSource]:
    """What ``region``'s aggregate sources from the resident streams of ``origins``:
    each declared topic allowed in both ``region`` and the origin (which may be
    ``region`` itself), in the order of ``origins``, then by topic."""
    allowed_here = sorted(
        (t for t in topics if not t.name.startswith("_") and t.allowed(region)),
        key=lambda t: t.name,
    )
    return [
        ResidentSource(origin, t.name)
        for origin in origins
        for t in allowed_here
        if t.allowed(origin)
    ]


# -- validation ---------------------------------------------------------------


def topic_violations(
    topic: str, field: str = "topic", *, reserved_ok: bool = False
) -> list[FieldViolation]:
    rule = (
        f"must be 1..{MAX_TOPIC_TOKENS} dot-separated tokens of a-z 0-9 _ - "
        f"(at most {MAX_TOPIC_CHARS} characters)"
    )
    tokens = topic.split(".")
    if (
        not topic
        or len(topic) > MAX_TOPIC_CHARS
        or len(tokens) > MAX_TOPIC_TOKENS
        or not all(TOPIC_TOKEN.fullmatch(t) for t in tokens)
    ):
        return [FieldViolation(field, rule)]
    if topic.startswith("_") and not reserved_ok:
        return [FieldViolation(field, "topics starting with '_' are reserved for Meridian")]
    return []


def topic_filter_violations(topic_filter: str) -> list[FieldViolation]:
    tokens = topic_filter.split(".")
    rule = (
        "must be dot-separated tokens of a-z 0-9 _ -, '*' for one token, or a final "
        f"'>' for the rest (at most {MAX_TOPIC_TOKENS} tokens, {MAX_TOPIC_CHARS} characters)"
    )
    if (
        not topic_filter
        or len(topic_filter) > MAX_TOPIC_CHARS
        or len(tokens) > MAX_TOPIC_TOKENS
        or not all(FILTER_TOKEN.fullmatch(t) for t in tokens)
        or ">" in tokens[:-1]
    ):
        return [FieldViolation("topic_filter", rule)]
    return []


def printable_violations(value: str, field: str, max_chars: int) -> list[FieldViolation]:
    if not value or len(value) > max_chars or not PRINTABLE.fullmatch(value):
        return [FieldViolation(field, f"must be 1..{max_chars} printable ASCII characters")]
    return []


def name_violations(value: str, field: str) -> list[FieldViolation]:
    if not GROUP.fullmatch(value):
        return [FieldViolation(field, "must be 1..64 characters of a-z 0-9 _ -")]
    return []


def payload_violations(payload: bytes) -> list[FieldViolation]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        return [
            FieldViolation(
                "payload", f"must be at most {MAX_PAYLOAD_BYTES} bytes, got {len(payload)}"
            )
        ]
    return []


def header_violations(headers: dict[str, str]) -> list[FieldViolation]:
    out = []
    if len(headers) > MAX_HEADERS:
        out.append(FieldViolation("headers", f"must be at most {MAX_HEADERS} headers"))
    size = 0
    for name, value in headers.items():
        size += len(name) + len(value.encode())
        if not HEADER_NAME.fullmatch(name):
            out.append(
                FieldViolation(
                    "headers", f"header names must be 1..64 of A-Z a-z 0-9 -, got {name[:40]!r}"
                )
            )
        elif name.lower().startswith(RESERVED_HEADER_PREFIXES):
            out.append(
                FieldViolation(
                    "headers",
                    f"header {name!r}: names starting with Nats- or Meridian- are reserved",
                )
            )
        if "\r" in value or "\n" in value:
            out.append(
                FieldViolation("headers", f"header {name!r}: values must not contain CR or LF")
            )
    if size > MAX_HEADER_BYTES:
        out.append(FieldViolation("headers", f"must be at most {MAX_HEADER_BYTES} bytes in all"))
    return out


MAX_ENDPOINT_CHARS = 2048


def endpoint_violations(endpoint: str, policy: EndpointPolicy = SANDBOX) -> list[FieldViolation]:
    rule = (
        f"must be an http:// or https:// URL with a host, at most {MAX_ENDPOINT_CHARS} "
        "characters, without credentials"
    )
    if not endpoint or len(endpoint) > MAX_ENDPOINT_CHARS or not PRINTABLE.fullmatch(endpoint):
        return [FieldViolation("endpoint", rule)]
    try:
        parts = urlsplit(endpoint)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        return [FieldViolation("endpoint", rule)]
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username
        or parts.password
        or not port_ok
        or " " in endpoint
    ):
        return [FieldViolation("endpoint", rule)]
    # The agent POSTs events here: no metadata or link-local host.
    return host_violations(parts.hostname, "endpoint", policy)


@dataclass(frozen=True)
class Start:
    """Where a new consumer group starts: new events, a sequence, or a time (epoch ms)."""

    sequence: int = 0
    time_ms: int = 0

    @property
    def is_new(self) -> bool:
        return not self.sequence and not self.time_ms
