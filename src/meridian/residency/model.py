"""Data residency on the servers: what each server stores, and which of it breaks a rule.

Pure: the I/O that fills an :class:`Inventory` is :mod:`meridian.residency.check`.

A byte is *resident* when its keyspace or topic declares a residency (the
regions allowed to store it; :mod:`meridian.core.residency`). It may be on a
server only when that server's region (its ``region:<name>`` tag) is one of
them. Where each kind of resident data lives, by stream name:

- a ``regional`` keyspace's partition: its bucket ``KV_mgr_<ks>_P<partition>``
  and the mirrors ``MGRM_<ks>_P<partition>_R<region>``
  (:mod:`meridian.state.model.regional`), which also carry the stream metadata
  ``meridian.keyspace``, ``meridian.partition`` and ``meridian.residency``;
- a ``replicated`` keyspace: each region's own writes ``MR_<ks>_<region>``
  and the aggregate ``MRA_<ks>_<region>`` (``meridian.state.replicated_store``);
- a ``global`` keyspace: ``KV_mg_<ks>`` (the configuration refuses a residency
  that leaves out a region, so this only matters for a configuration that
  changed);
- a topic's events: any stream ``EV_``, ``EVA_``, ``EVDLQ_`` or ``EVR_``
  (``meridian.events``) may hold them, on the subjects
  :func:`topic_filters` lists; JetStream reports no per-subject bytes, so
  these are judged by the messages counted on those subjects
  (:attr:`StoredStream.topic_messages`).

The configuration is the rule. A stream of a keyspace the configuration no
longer declares is judged by its ``meridian.residency`` metadata, when it has
one. A server whose tags name no region proves nothing about where it is, so
resident data on it is a violation too. A misplaced stream that holds nothing
yet is a warning: it will receive data, but no byte is out of place today.

The parsers of the servers' monitoring answers (``/varz``, ``/jsz``) are here
too, so hostile or malformed answers are refused by pure, tested code:
:class:`MonitorAnswerError` names the field and the rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meridian.core.errors import UnavailableError
from meridian.core.keyspace import KEYSPACE_NAME, Keyspace
from meridian.core.residency import TopicResidency
from meridian.state.model import regional

#: The stream prefixes of replicated keyspaces (``replicated_store.own_stream``
#: and ``aggregate_stream``; tests/unit/test_residency_check.py pins them).
REPLICATED_OWN_PREFIX = "MR_"
REPLICATED_AGGREGATE_PREFIX = "MRA_"
#: A global keyspace's bucket stream: ``KV_`` + ``Keyspace.bucket``.
GLOBAL_BUCKET_PREFIX = "KV_mg_"
#: Event streams: a region's own (``EV_``), its aggregate (``EVA_``), its dead
#: letters (``EVDLQ_``) and its resident topics' own stream (``EVR_``).
EVENT_STREAM_PREFIXES = ("EV_", "EVA_", "EVDLQ_", "EVR_")
#: Event subjects: ``mev.<region>.<topic>``, ``mevr.<region>.<topic>``
#: (resident topics) and ``mevdlq.<region>.<group>.<topic>`` (dead letters).
EVENT_SUBJECT_PREFIX = "mev"
RESIDENT_EVENT_SUBJECT_PREFIX = "mevr"
DLQ_SUBJECT_PREFIX = "mevdlq"

#: Region names as the configuration allows them (``config.model.REGION_NAME``).
_REGION = re.compile(r"[a-z][a-z0-9-]{0,30}[a-z0-9]")
#: What NATS allows in a stream name (no whitespace, '.', '*', '>', '/' or
#: '\\'), and printable ASCII: nothing that could rewrite the terminal the
#: report is printed on, nothing nats-py would refuse to ask about.
_STREAM_NAME = re.compile(r"(?![^.*>/\\]*[.*>/\\])[\x21-\x7e]{1,255}")
_PRINTABLE = re.compile(r"[\x20-\x7e]{1,255}")
_REGION_TAG = "region:"


class MonitorAnswerError(UnavailableError):
    """A server's monitoring endpoint answered something this check cannot read.

    ``where`` is the endpoint, ``path`` the field (``account_details[0].name``)
    and ``rule`` what it must be."""

    def __init__(self, where: str, path: str, rule: str) -> None:
        super().__init__(f"{where}: {path}: {rule}")
        self.where = where
        self.path = path
        self.rule = rule


# -- the inventory --------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A nats-server: its name, region (``""`` when no tag names one) and cluster."""

    name: str
    region: str
    cluster: str
    monitor_url: str


@dataclass(frozen=True)
class StoredStream:
    """One replica of a stream, on one server."""

    server: str
    region: str
    account: str
    stream: str
    bytes: int
    messages: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: Messages counted on each topic's subjects (:func:`topic_filters`).
    #: Only event streams need it, and only for the topics the server's region
    #: may not hold (:func:`topics_to_count`).
    topic_messages: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Inventory:
    """Every server asked, and every stream replica each one stores."""

    servers: tuple[Server, ...]
    streams: tuple[StoredStream, ...]


@dataclass(frozen=True)
class Rules:
    """The residencies to judge by: per keyspace (every declared one, an empty
    residency meaning every region) and per topic (its first token)."""

    keyspaces: Mapping[str, tuple[str, ...]]
    topics: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, keyspaces: Iterable[Keyspace], topics: Iterable[TopicResidency]) -> Rules:
        """The rules of a configuration's ``keyspaces`` and ``topics``."""
        return cls(
            # A keyspace's "every region" is None or (); here it is always ().
            keyspaces={ks.name: tuple(ks.residency or ()) for ks in keyspaces},
            topics={t.name: t.residency for t in topics if t.residency},
        )


# -- the judgement -------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """Resident data on a server outside its allowed regions.

    ``bytes`` is the stream's size on that server; ``messages`` those of the
    resource (for a topic: the messages counted on its subjects, as JetStream
    reports no bytes per subject). ``rule`` says where the residency came from:
    ``configuration`` or ``stream metadata``."""

    server: str
    region: str
    stream: str
    bytes: int
    messages: int
    resource: str
    allowed: tuple[str, ...]
    rule: str

    def __str__(self) -> str:
        where = self.region or "no region:<name> tag"
        return (
            f"server {self.server} ({where}) stores stream {self.stream}: "
            f"{self.messages} message(s) of {self.resource} ({self.bytes} bytes in the stream), "
            f"which may only be stored in {', '.join(self.allowed)} (rule from the {self.rule})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "region": self.region,
            "stream": self.stream,
            "bytes": self.bytes,
            "messages": self.messages,
            "resource": self.resource,
            "allowed": list(self.allowed),
            "rule": self.rule,
        }


@dataclass(frozen=True)
class Judgement:
    """What :func:`judge` found: ``violations`` (resident bytes out of place),
    ``warnings`` (misplaced but empty streams, streams no rule covers) and
    ``unchecked`` (event streams whose topic counts the inventory lacks)."""

    violations: tuple[Violation, ...]
    warnings: tuple[str, ...]
    unchecked: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.violations and not self.unchecked


@dataclass(frozen=True)
class _Resource:
    """Resident data a stream holds: what it is, where it may be, and why."""

    what: str
    allowed: tuple[str, ...]
    rule: str


def is_event_stream(name: str) -> bool:
    return name.startswith(EVENT_STREAM_PREFIXES)


def topic_filters(topic: str) -> tuple[str, ...]:
    """The subject filters that together match every event of ``topic`` (a
    first token) on any event stream, each subject matched by exactly one."""
    out = []
    for prefix in (
        f"{EVENT_SUBJECT_PREFIX}.*",
        f"{RESIDENT_EVENT_SUBJECT_PREFIX}.*",
        f"{DLQ_SUBJECT_PREFIX}.*.*",
    ):
        out += [f"{prefix}.{topic}", f"{prefix}.{topic}.>"]
    return tuple(out)


def topics_to_count(stream: StoredStream, rules: Rules) -> tuple[str, ...]:
    """The resident topics whose messages must be counted on ``stream``: those
    its server's region may not hold, if it is an event stream."""
    if not is_event_stream(stream.stream):
        return ()
    return tuple(sorted(t for t, allowed in rules.topics.items() if stream.region not in allowed))


def _metadata_residency(metadata: Mapping[str, str]) -> tuple[str, ...] | None:
    """``meridian.residency`` as regions (empty: every region); None when it is
    absent or not a comma-separated list of region names."""
    raw = metadata.get(regional.META_RESIDENCY)
    if raw is None:
        return None
    regions = tuple(r.strip() for r in raw.split(",") if r.strip())
    if not all(_REGION.fullmatch(r) for r in regions):
        return None
    return regions


def _keyspace_resource(
    ks: str, what: str, metadata: Mapping[str, str], rules: Rules
) -> _Resource | str:
    """The rule for keyspace ``ks``: from the configuration, else from the
    stream's metadata; a warning (str) when neither has one."""
    if ks in rules.keyspaces:
        return _Resource(what, rules.keyspaces[ks], "configuration")
    from_meta = _metadata_residency(metadata)
    if from_meta is not None:
        return _Resource(f"{what} (not in the configuration)", from_meta, "stream metadata")
    return (
        f"{what}: the configuration does not declare it and the stream has no "
        f"{regional.META_RESIDENCY} metadata; not judged"
    )


def _resource(stream: StoredStream, rules: Rules) -> _Resource | str | None:
    """The resident data ``stream`` holds as a whole (event streams are judged
    per topic instead); a warning (str) for a stream no rule covers; None for
    a stream that is not a keyspace's."""
    name, meta = stream.stream, stream.metadata
    parsed = regional.parse(name)
    if parsed is not None:
        what = f"keyspace {parsed.keyspace} partition {parsed.partition}"
        return _keyspace_resource(parsed.keyspace, what, meta, rules)
    for prefix, kind in (
        (REPLICATED_AGGREGATE_PREFIX, "replicated keyspace"),
        (REPLICATED_OWN_PREFIX, "replicated keyspace"),
    ):
        if name.startswith(prefix):
            # Region names have no '_', keyspace names may: the region is last.
            ks, sep, region = name[len(prefix) :].rpartition("_")
            if sep and KEYSPACE_NAME.fullmatch(ks) and _REGION.fullmatch(region):
                return _keyspace_resource(ks, f"{kind} {ks}", meta, rules)
    if name.startswith(RESIDENT_IDEMPOTENCY_PREFIX):
        # Resident idempotency scopes' records: in the bucket's home region only.
        home = name[len(RESIDENT_IDEMPOTENCY_PREFIX) :]
        if _REGION.fullmatch(home):
            return _Resource("resident idempotency records", (home,), "configuration")
    if name.startswith(GLOBAL_BUCKET_PREFIX):
        ks = name[len(GLOBAL_BUCKET_PREFIX) :]
        if rules.keyspaces.get(ks):
            return _Resource(f"global keyspace {ks}", rules.keyspaces[ks], "configuration")
        # Meridian's own buckets (inboxes, registries) share the prefix.
        return None
    # A stream named otherwise that says whose data it holds.
    ks = meta.get(regional.META_KEYSPACE, "")
    if KEYSPACE_NAME.fullmatch(ks):
        part = meta.get(regional.META_PARTITION, "")
        what = f"keyspace {ks}" + (
            f" partition {part}" if regional.PARTITION.fullmatch(part) else ""
        )
        return _keyspace_resource(ks, what, meta, rules)
    return None


#: The bucket of resident idempotency scopes homed in a region
#: (meridian.idempotency.store: ``_idempotency_r_<home>``).
RESIDENT_IDEMPOTENCY_PREFIX = "KV_mg__idempotency_r_"


def _outside(region: str, allowed: tuple[str, ...]) -> bool:
    return bool(allowed) and region not in allowed


def judge(inventory: Inventory, rules: Rules) -> Judgement:
    """Judge every replica in ``inventory`` by ``rules``: the violations (in
    the inventory's order), the warnings, and what could not be judged."""
    violations: list[Violation] = []
    warnings: list[str] = []
    unchecked: list[str] = []
    for s in inventory.streams:
        here = f"{s.stream} on {s.server}"
        if is_event_stream(s.stream):
            for topic in topics_to_count(s, rules):
                count = s.topic_messages.get(topic)
                if count is None:
                    unchecked.append(f"{here}: messages of topic {topic} were not counted")
                elif count > 0:
                    violations.append(
                        Violation(
                            s.server,
                            s.region,
                            s.stream,
                            s.bytes,
                            count,
                            f"topic {topic}",
                            rules.topics[topic],
                            "configuration",
                        )
                    )
            continue
        res = _resource(s, rules)
        if res is None:
            continue
        if isinstance(res, str):
            warnings.append(f"{here}: {res}")
            continue
        if not _outside(s.region, res.allowed):
            continue
        if s.bytes == 0 and s.messages == 0:
            warnings.append(
                f"{here} ({s.region or 'no region tag'}) is a stream of {res.what}, which may "
                f"only be stored in {', '.join(res.allowed)}; it holds nothing yet"
            )
            continue
        violations.append(
            Violation(
                s.server,
                s.region,
                s.stream,
                s.bytes,
                s.messages,
                res.what,
                res.allowed,
                res.rule,
            )
        )
    return Judgement(tuple(violations), tuple(warnings), tuple(unchecked))


def violations(inventory: Inventory, rules: Rules) -> list[Violation]:
    """:func:`judge`'s violations alone."""
    return list(judge(inventory, rules).violations)


# -- monitoring answers ----------------------------------------------------------


def _obj(where: str, path: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MonitorAnswerError(where, path, f"must be an object; got {_kind(value)}")
    return value


def _list(where: str, path: str, value: object) -> Sequence[Any]:
    """A JSON array; an absent one (null) is empty, as Go marshals it."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MonitorAnswerError(where, path, f"must be an array; got {_kind(value)}")
    return value


def _count(where: str, path: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MonitorAnswerError(where, path, f"must be a non-negative integer; got {_show(value)}")
    return value


def _text(where: str, path: str, value: object, pattern: re.Pattern[str] = _PRINTABLE) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        rule = "1-255 printable ASCII characters"
        if pattern is _STREAM_NAME:
            rule += " without spaces, '.', '*', '>', '/' or '\\'"
        raise MonitorAnswerError(where, path, f"must be {rule}; got {_show(value)}")
    return value


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _show(value: object) -> str:
    # repr() escapes control characters; the cut keeps a hostile answer short.
    return f"{_kind(value)} {value!r:.60}"


def decode_json(body: bytes, where: str) -> object:
    """A monitoring answer's JSON. Raises :class:`MonitorAnswerError` for
    anything else: not UTF-8, not JSON, or nested past the parser's limit."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        reason = "nested too deeply" if isinstance(exc, RecursionError) else f"{exc}"[:120]
        raise MonitorAnswerError(where, "(answer)", f"must be JSON: {reason}") from exc


def parse_varz(answer: object, monitor_url: str) -> Server:
    """The server a ``/varz`` answer describes. Its region is the value of its
    ``region:<name>`` tag (``""`` without one). Raises :class:`MonitorAnswerError`."""
    where = f"{monitor_url}/varz"
    data = _obj(where, "(answer)", answer)
    name = _text(where, "server_name", data.get("server_name"))
    regions: list[str] = []
    for i, tag in enumerate(_list(where, "tags", data.get("tags"))):
        tag = _text(where, f"tags[{i}]", tag)
        if tag.lower().startswith(_REGION_TAG):
            region = tag[len(_REGION_TAG) :].lower()
            if not _REGION.fullmatch(region):
                raise MonitorAnswerError(
                    where, f"tags[{i}]", f"region:<name> must name a region; got {tag!r:.60}"
                )
            regions.append(region)
    if len(set(regions)) > 1:
        raise MonitorAnswerError(
            where, "tags", f"name one region, not several ({', '.join(sorted(set(regions)))})"
        )
    cluster = ""
    if data.get("cluster") is not None:
        raw = _obj(where, "cluster", data["cluster"]).get("name")
        cluster = "" if raw in (None, "") else _text(where, "cluster.name", raw)
    return Server(name, regions[0] if regions else "", cluster, monitor_url)


def parse_jsz(answer: object, server: Server) -> list[StoredStream]:
    """The stream replicas a ``/jsz?accounts=true&streams=true&config=true``
    answer lists. An answer that details fewer accounts than it counts
    (``accounts``: the server pages them) is refused rather than half judged.
    Raises :class:`MonitorAnswerError`."""
    where = f"{server.monitor_url}/jsz"
    data = _obj(where, "(answer)", answer)
    if data.get("disabled") is True:
        return []
    accounts = _list(where, "account_details", data.get("account_details"))
    if data.get("accounts") is not None:
        counted = _count(where, "accounts", data["accounts"])
        if counted > len(accounts):
            raise MonitorAnswerError(
                where,
                "account_details",
                f"details {len(accounts)} of the {counted} accounts; ask with a higher limit",
            )
    out: list[StoredStream] = []
    for a, raw_account in enumerate(accounts):
        apath = f"account_details[{a}]"
        account = _obj(where, apath, raw_account)
        account_name = _text(where, f"{apath}.name", account.get("name"))
        for s, raw_stream in enumerate(
            _list(where, f"{apath}.stream_detail", account.get("stream_detail"))
        ):
            spath = f"{apath}.stream_detail[{s}]"
            stream = _obj(where, spath, raw_stream)
            name = _text(where, f"{spath}.name", stream.get("name"), _STREAM_NAME)
            state = _obj(where, f"{spath}.state", stream.get("state"))
            metadata: dict[str, str] = {}
            if stream.get("config") is not None:
                config = _obj(where, f"{spath}.config", stream["config"])
                if config.get("metadata") is not None:
                    raw_meta = _obj(where, f"{spath}.config.metadata", config["metadata"])
                    for key, value in raw_meta.items():
                        if not isinstance(value, str):
                            raise MonitorAnswerError(
                                where,
                                f"{spath}.config.metadata[{key!r:.40}]",
                                f"must be a string; got {_show(value)}",
                            )
                        metadata[key] = value
            out.append(
                StoredStream(
                    server=server.name,
                    region=server.region,
                    account=account_name,
                    stream=name,
                    bytes=_count(where, f"{spath}.state.bytes", state.get("bytes")),
                    messages=_count(where, f"{spath}.state.messages", state.get("messages")),
                    metadata=metadata,
                )
            )
    return out
