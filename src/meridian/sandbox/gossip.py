"""A streaming filter that removes address gossip from NATS route and gateway traffic.

NATS servers tell each other, inside ``INFO`` messages, which addresses they
use to reach other servers (``gateway_urls``, ``gateway_url``,
``connect_urls``...). In the sandbox those addresses are WAN-emulator proxy
ports, each meant for one *source* region, or direct listen ports. A server
that learned another region's proxy port, or a direct port, would reach a peer
with the wrong latency or around the emulator altogether; ``advertise`` and
``no_advertise`` don't cover every gossip path (seen with nats-server 2.15).

The emulator therefore runs every byte between regions through
:class:`GossipFilter` (with mutual TLS, between the two TLS legs it
terminates: sandbox/wan_tls.py), which parses just enough of the NATS wire protocol to
find ``INFO`` lines and deletes their address fields; every other byte passes
through unchanged. Servers then only ever use the URLs their own configuration
gives them, which are the proxies of their own region.

Hand-written because no library exposes a NATS protocol parser that works on
a raw server-to-server byte stream; the rules it needs are small: every
protocol line ends in CRLF, and the message ops carry a payload whose size is
their last argument.

This module is pure: bytes in, bytes out.
"""

from __future__ import annotations

import json

#: INFO fields that carry addresses of other servers.
ADDRESS_FIELDS = (
    "gateway_urls",
    "gateway_url",
    "connect_urls",
    "ws_connect_urls",
    "leafnode_urls",
)

#: Ops followed by a payload whose byte size is the line's last token.
_PAYLOAD_OPS = frozenset({b"MSG", b"HMSG", b"RMSG", b"LMSG", b"PUB", b"HPUB"})

#: A control line longer than this is not NATS; stop filtering and pass bytes through.
MAX_LINE = 1 << 20


class GossipFilter:
    """Feed it the bytes of one direction of one connection, in order; it returns
    the bytes to forward. Holds back at most one incomplete protocol line."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._payload_left = 0
        self._passthrough = False
        self.stripped = 0  # INFO messages rewritten

    def feed(self, data: bytes) -> bytes:
        if self._passthrough:
            return data
        self._buf += data
        out = bytearray()
        while self._buf:
            if self._payload_left:
                n = min(self._payload_left, len(self._buf))
                out += self._buf[:n]
                del self._buf[:n]
                self._payload_left -= n
                continue
            end = self._buf.find(b"\r\n")
            if end < 0 or end > MAX_LINE:
                if len(self._buf) > MAX_LINE:
                    # Not a protocol we understand: stop interfering.
                    self._passthrough = True
                    out += self._buf
                    self._buf.clear()
                break
            line = bytes(self._buf[: end + 2])
            del self._buf[: end + 2]
            out += self._line(line)
        return bytes(out)

    def _line(self, line: bytes) -> bytes:
        body = line[:-2]
        op, _, rest = body.partition(b" ")
        upper = op.upper()
        if upper in _PAYLOAD_OPS:
            args = rest.split()
            if args and args[-1].isdigit():
                self._payload_left = int(args[-1]) + 2  # payload + CRLF
            return line
        if upper == b"INFO":
            return self._strip_info(rest) or line
        return line

    def _strip_info(self, raw: bytes) -> bytes | None:
        try:
            info = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(info, dict) or not any(f in info for f in ADDRESS_FIELDS):
            return None
        for f in ADDRESS_FIELDS:
            info.pop(f, None)
        self.stripped += 1
        return b"INFO " + json.dumps(info, separators=(",", ":")).encode() + b"\r\n"
