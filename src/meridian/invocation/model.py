"""Service registry rules: what a registration may say, and which instances are usable.

Pure: the agent (:mod:`meridian.invocation.registry`) feeds in registrations,
health-check results and announcements with the times it saw them, and asks
which instances of a service it may call. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from meridian.core.endpoints import SANDBOX, EndpointPolicy, host_violations
from meridian.core.errors import FieldViolation, InvalidArgumentError

#: Service names are DNS labels (so they fit URLs, subjects and metric labels).
SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]\Z|^[a-z]\Z")
#: Instance ids become a NATS subject token: no dots, spaces or wildcards.
INSTANCE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
ENDPOINT = re.compile(
    r"^(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):(?P<port>[0-9]{1,5})\Z"
)
HTTP_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]{0,1023}\Z")
VERSION_MAX = 64
METADATA_MAX_ENTRIES = 32
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 512
MIN_TTL_S = 1.0
MIN_CHECK_INTERVAL_S = 0.1
MAX_CHECK_INTERVAL_S = 60.0
DEFAULT_CHECK_INTERVAL_S = 1.0
DEFAULT_HEALTH_PATH = "/healthz"
PROTOCOLS = ("http", "grpc")


@dataclass(frozen=True)
class Registration:
    """A validated registration request."""

    service: str
    endpoint: str
    protocol: str
    instance_id: str = ""
    version: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    health_path: str = DEFAULT_HEALTH_PATH
    grpc_health_service: str = ""
    check_interval_s: float = DEFAULT_CHECK_INTERVAL_S
    ttl_s: float = 10.0


def validate_service(service: str, name: str = "service") -> None:
    if not SERVICE_NAME.match(service):
        raise InvalidArgumentError(
            FieldViolation(
                name,
                "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter "
                "and not ending with '-'",
            )
        )


def validate_registration(
    *,
    service: str,
    endpoint: str,
    protocol: str,
    instance_id: str,
    version: str,
    metadata: Mapping[str, str],
    health_path: str,
    grpc_health_service: str,
    check_interval_s: float | None,
    ttl_s: float | None,
    default_ttl_s: float,
    max_ttl_s: float,
    endpoints: EndpointPolicy = SANDBOX,
) -> Registration:
    """The registration, or InvalidArgumentError naming every broken field;
    ``endpoints``: what the deployment allows beyond the fixed rules."""
    v: list[FieldViolation] = []
    if not SERVICE_NAME.match(service):
        v.append(
            FieldViolation(
                "instance.service",
                "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter",
            )
        )
    m = ENDPOINT.match(endpoint)
    if m is None or not 1 <= int(m.group("port")) <= 65535:
        v.append(FieldViolation("instance.endpoint", "must be host:port with a port in 1..65535"))
    else:  # every caller of the service is routed here: no metadata or link-local host
        v += host_violations(m.group("host"), "instance.endpoint", endpoints)
    if protocol not in PROTOCOLS:
        v.append(FieldViolation("instance.protocol", "must be PROTOCOL_HTTP or PROTOCOL_GRPC"))
    if instance_id and not INSTANCE_ID.match(instance_id):
        v.append(
            FieldViolation(
                "instance.instance_id", "must be 1-128 characters of A-Z, a-z, 0-9, '_' and '-'"
            )
        )
    if len(version) > VERSION_MAX:
        v.append(FieldViolation("instance.version", f"must be at most {VERSION_MAX} characters"))
    if len(metadata) > METADATA_MAX_ENTRIES:
        v.append(
            FieldViolation("instance.metadata", f"must have at most {METADATA_MAX_ENTRIES} entries")
        )
    elif any(
        not k or len(k) > METADATA_KEY_MAX or len(val) > METADATA_VALUE_MAX
        for k, val in metadata.items()
    ):
        v.append(
            FieldViolation(
                "instance.metadata",
                f"keys must be 1-{METADATA_KEY_MAX} characters, values at most "
                f"{METADATA_VALUE_MAX}",
            )
        )
    path = health_path or DEFAULT_HEALTH_PATH
    if not HTTP_PATH.match(path):
        v.append(
            FieldViolation(
                "instance.health_check.http_path", "must be an absolute URL path of at most 1 KiB"
            )
        )
    if len(grpc_health_service) > 256:
        v.append(
            FieldViolation("instance.health_check.grpc_service", "must be at most 256 characters")
        )
    interval = check_interval_s or DEFAULT_CHECK_INTERVAL_S
    if not MIN_CHECK_INTERVAL_S <= interval <= MAX_CHECK_INTERVAL_S:
        v.append(
            FieldViolation(
                "instance.health_check.interval",
                f"must be between {MIN_CHECK_INTERVAL_S:g} s and {MAX_CHECK_INTERVAL_S:g} s",
            )
        )
    ttl = ttl_s or default_ttl_s
    if not MIN_TTL_S <= ttl <= max_ttl_s:
        v.append(FieldViolation("ttl", f"must be between {MIN_TTL_S:g} s and {max_ttl_s:g} s"))
    if v:
        raise InvalidArgumentError(v)
    return Registration(
        service=service,
        endpoint=endpoint,
        protocol=protocol,
        instance_id=instance_id,
        version=version,
        metadata=dict(metadata),
        health_path=path,
        grpc_health_service=grpc_health_service,
        check_interval_s=interval,
        ttl_s=ttl,
    )


@dataclass(frozen=True)
class InstanceView:
    """One instance as the router sees it."""

    instance_id: str
    service: str
    region: str
    endpoint: str
    protocol: str
    healthy: bool
    #: The version it registered ("" if none).
    version: str = ""


@dataclass
class _Seen:
    view: InstanceView
    seen_at: float


class RegistryReplica:
    """What this agent knows of every region's instances.

    Entries come from the replicated registry (:meth:`apply`) and are stamped
    with the local monotonic time they arrived; an entry older than
    ``stale_after_s`` is treated as gone, since its agent stopped announcing it.
    """

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self._entries: dict[str, _Seen] = {}

    def apply(self, instance_id: str, view: InstanceView | None, now: float) -> None:
        if view is None:
            self._entries.pop(instance_id, None)
        else:
            self._entries[instance_id] = _Seen(view, now)

    def fresh(self, now: float) -> Iterable[InstanceView]:
        horizon = now - self.stale_after_s
        for seen in list(self._entries.values()):
            if seen.seen_at >= horizon:
                yield seen.view

    def instances(self, service: str, now: float) -> list[InstanceView]:
        return [v for v in self.fresh(now) if v.service == service]

    def seen_at(self, instance_id: str) -> float | None:
        seen = self._entries.get(instance_id)
        return None if seen is None else seen.seen_at

    def prune(self, now: float) -> None:
        """Forget entries stale for a long while (ten times the staleness)."""
        horizon = now - 10 * self.stale_after_s
        for key in [k for k, s in self._entries.items() if s.seen_at < horizon]:
            del self._entries[key]


# -- calls: the rules for a call's fields, checked where a call comes in (the
# transports) and again where a forwarded one is served (another agent) -------

HTTP_VERBS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
#: The path after the service: URL path characters, no "..", at most 2 KiB.
METHOD_PATH = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%/-]{0,2048}\Z")
GRPC_METHOD = re.compile(r"^/[A-Za-z_][A-Za-z0-9_.]{0,254}/[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}\Z")
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024
MAX_QUERY = 8 * 1024


def service_violations(service: str, name: str = "service") -> list[FieldViolation]:
    if SERVICE_NAME.match(service):
        return []
    return [
        FieldViolation(name, "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter")
    ]


def header_violations(
    headers: Iterable[tuple[str, str]], name: str, *, parsed: bool = False
) -> list[FieldViolation]:
    """``parsed``: the headers come from a request an HTTP server parsed (names
    are tokens, values have no CR or LF): only their number and size count."""
    v: list[FieldViolation] = []
    total = count = 0
    for k, val in headers:
        count += 1
        total += len(k) + len(val)
        if parsed:
            continue
        if not HEADER_NAME.match(k):
            v.append(FieldViolation(name, f"header name {k[:40]!r} is not an HTTP token"))
            break
        if "\r" in val or "\n" in val or "\0" in val:
            v.append(FieldViolation(name, f"header {k!r} has a CR, LF or NUL in its value"))
            break
    if count > MAX_HEADERS:
        v.append(FieldViolation(name, f"must have at most {MAX_HEADERS} headers"))
    if total > MAX_HEADER_BYTES:
        v.append(FieldViolation(name, f"must total at most {MAX_HEADER_BYTES} bytes"))
    return v


def http_violations(
    *,
    service: str,
    method: str,
    verb: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    body_bytes: int,
    max_body: int,
    parsed_headers: bool = False,
) -> list[FieldViolation]:
    """Every rule an HTTP call breaks; ``verb`` already upper-case."""
    v = service_violations(service)
    if not METHOD_PATH.match(method) or any(
        unquote(segment) in (".", "..") for segment in method.split("/")
    ):
        v.append(
            FieldViolation(
                "method", "must be a URL path of at most 2 KiB without '.' or '..' segments"
            )
        )
    if verb not in HTTP_VERBS:
        v.append(FieldViolation("http_verb", f"must be one of {', '.join(sorted(HTTP_VERBS))}"))
    if len(query) > MAX_QUERY or any(c in query for c in "\r\n\0 #"):
        v.append(
            FieldViolation("query", f"must be at most {MAX_QUERY} bytes with no space, CR, LF, #")
        )
    v += header_violations(headers, "headers", parsed=parsed_headers)
    if body_bytes > max_body:
        v.append(FieldViolation("body", f"must be at most {max_body} bytes"))
    return v


def grpc_violations(
    *,
    service: str,
    full_method: str,
    body_bytes: int,
    max_body: int,
    metadata: Iterable[tuple[str, str]] = (),
) -> list[FieldViolation]:
    """Every rule a proxied gRPC call breaks."""
    v = service_violations(service, "meridian-service")
    if not GRPC_METHOD.match(full_method):
        v.append(FieldViolation("method", "must be /package.Service/Method"))
    v += header_violations(metadata, "metadata")
    if body_bytes > max_body:
        v.append(FieldViolation("request", f"must be at most {max_body} bytes"))
    return v


#: gRPC metadata keys ending so carry bytes (the gRPC spec's binary headers).
BINARY_SUFFIX = "-bin"


def metadata_text(key: str, value: str | bytes) -> str:
    """A gRPC metadata value as a call carries it between agents: text as it
    is, a binary (``-bin``) value as base64, the way HTTP/2 carries it."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def metadata_wire(key: str, text: str) -> str | bytes | None:
    """:func:`metadata_text` undone for a gRPC call: a ``-bin`` key's base64
    back to bytes (None when it is not base64: the header is dropped)."""
    if not key.endswith(BINARY_SUFFIX):
        return text
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
