"""What the router passes around: one call, one reply, and why an attempt failed.

Shared by the router (:mod:`.invoke`), the instance client (:mod:`.upstream`)
and the peer-agent forwarder (:mod:`.forward`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meridian.invocation.resilience.outlier import CallOutcome, classify_grpc, classify_http

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


@dataclass(frozen=True)
class Call:
    """One invocation as the router sees it, whichever transport it came by."""

    service: str
    #: HTTP: the path after the service name; gRPC: /package.Service/Method.
    route: str
    protocol: str  # "http" | "grpc"
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    verb: str = "POST"
    query: str = ""
    has_idempotency_key: bool = False


@dataclass
class Reply:
    """What the serving instance answered."""

    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    status: int = 200  # HTTP status (200 for any gRPC reply)
    grpc_code: str = ""  # "" for HTTP, "OK" or the code name for gRPC
    grpc_details: str = ""
    region: str = ""
    instance_id: str = ""
    #: The version the serving instance registered.
    version: str = ""
    attempts: int = 1
    fallback: bool = False

    def outcome(self) -> CallOutcome:
        return classify_grpc(self.grpc_code) if self.grpc_code else classify_http(self.status)


class AttemptFailed(Exception):
    """No answer from the target: refused, reset, timed out, or nothing to call."""

    def __init__(self, reason: str, *, not_sent: bool, region: str, instance_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.not_sent = not_sent
        self.region = region
        self.instance_id = instance_id


class NoRoute(Exception):
    """No region has a usable instance whose breaker grants a call."""
