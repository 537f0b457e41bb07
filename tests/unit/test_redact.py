"""Credentials in URLs are masked wherever a URL is shown."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.core.redact import redact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("nats://alice:s3cret@10.0.0.1:4222", "nats://***@10.0.0.1:4222"),
        ("tls://token@nats.example:4222", "tls://***@nats.example:4222"),
        (
            "cannot connect to NATS at nats://a:b@h:1, nats://c:d@k:2: refused",
            "cannot connect to NATS at nats://***@h:1, nats://***@k:2: refused",
        ),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("http://example/path@x", "http://example/path@x"),  # '@' after the path: no userinfo
        ("user@example.com wrote", "user@example.com wrote"),
        ("", ""),
    ],
)
def test_userinfo_is_masked_and_nothing_else(text: str, shown: str) -> None:
    assert redact(text) == shown


@given(
    # RFC 3986 userinfo: unreserved, percent-encoded, sub-delims and ':'.
    user=st.text(
        alphabet="abcXYZ019-._~!$&'()*+,;=:%",
        min_size=1,
    ),
    host=st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True),
)
def test_no_password_survives(user: str, host: str) -> None:
    out = redact(f"error at nats://{user}@{host}:4222 (retrying)")
    assert out == f"error at nats://***@{host}:4222 (retrying)"
