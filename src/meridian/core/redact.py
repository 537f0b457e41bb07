"""Credentials never leave in logs, status or errors: the user information of
URLs (``nats://user:password@host``) is masked wherever a URL is shown."""

from __future__ import annotations

import re

MASK = "***"
# scheme://userinfo@ ; userinfo has no '/', '@' or whitespace (RFC 3986).
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """``text`` with the user information of every URL in it masked:
    ``nats://alice:s3cret@h:4222`` becomes ``nats://***@h:4222``."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
