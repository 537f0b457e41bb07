"""Mutual TLS on the WAN emulator's links: NATS routes and gateways stay
encrypted and authenticated while the emulator still shapes them.

A sandbox's routes and gateways are mutual TLS (backbone/topology.py), and
they cross the emulator, which must read their ``INFO`` messages to strip the
address gossip (sandbox/gossip.py): NATS gossips every gateway URL a server
knows to every inbound gateway, so a server would otherwise learn another
region's proxy and route around a partition. So each proxy terminates TLS like
a service mesh's sidecar:

- towards the server that dials it, it shows the certificate of the server it
  leads to, and requires a client certificate from the bundle naming one of
  the *source* region's NATS servers (a server that learned a proxy meant for
  another region is refused, not carried);
- towards the upstream server, it dials with mutual TLS as that same source
  server (the emulator runs beside the sandbox's CA, like the servers), and
  checks the upstream names the server it should.

The servers still verify and map every certificate (``verify_and_map``): the
emulator holds the NATS servers' keys only because it stands in for the WAN.
Both sides follow the files (security.tls), so renewals apply to the next
connection.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from meridian.core.errors import InvalidArgumentError
from meridian.security.model import Identity
from meridian.security.tls import ClientTls, ReloadingContext, TlsFiles, peer_identity


class LinkRefused(Exception):
    """A connection this link may not carry; the message says why."""


@dataclass
class ProxyTls:
    """One proxy's TLS: ``upstream`` is the server it leads to; ``sources``
    maps each SPIFFE ID that may dial it to that identity's files."""

    upstream: Identity
    upstream_files: TlsFiles
    sources: dict[str, TlsFiles]
    _accept: ReloadingContext | None = field(default=None, init=False, repr=False)
    _dial: dict[str, ClientTls] = field(default_factory=dict, init=False, repr=False)

    def accept_context(self) -> ssl.SSLContext:
        """The server context shown to dialling servers (follows the files)."""
        if self._accept is None:
            self._accept = ReloadingContext(self.upstream_files)
        return self._accept.outer

    def upstream_context(self, ssl_object: ssl.SSLObject) -> ssl.SSLContext:
        """The client context to dial upstream as the peer of ``ssl_object``."""
        try:
            peer = peer_identity(ssl_object)
        except InvalidArgumentError as exc:
            raise LinkRefused(f"the dialling server's certificate: {exc}") from None
        files = self.sources.get(peer.uri)
        if files is None:
            raise LinkRefused(
                f"{peer.uri} may not use this link (it serves {', '.join(sorted(self.sources))})"
            )
        if peer.uri not in self._dial:
            self._dial[peer.uri] = ClientTls(files)
        return self._dial[peer.uri].current()

    def check_upstream(self, ssl_object: ssl.SSLObject) -> None:
        try:
            found = peer_identity(ssl_object)
        except InvalidArgumentError as exc:
            raise LinkRefused(f"the upstream server's certificate: {exc}") from None
        if found != self.upstream:
            raise LinkRefused(f"upstream presented {found.uri}, not {self.upstream.uri}")
