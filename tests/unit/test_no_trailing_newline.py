"""Every anchored validation pattern ends at the end of the text.

``$`` in a Python regex also matches before a final newline, so ``orders\\n``
passed as a service name (a NATS subject token) and ``X-A\\n`` as a header
name. The patterns end in ``\\Z``; this test fails if one goes back to ``$``.
"""

from __future__ import annotations

import re

import pytest

from meridian.config.model import REGION_NAME
from meridian.core.errors import InvalidArgumentError
from meridian.invocation.model import (
    ENDPOINT,
    GRPC_METHOD,
    HEADER_NAME,
    HTTP_PATH,
    INSTANCE_ID,
    METHOD_PATH,
    SERVICE_NAME,
)
from meridian.invocation.service import http_call
from meridian.security.model import NAME, TRUST_DOMAIN
from meridian.transport.routes import PATH_STYLE

CASES = [
    (REGION_NAME, "us-east"),
    (SERVICE_NAME, "orders"),
    (SERVICE_NAME, "o"),
    (INSTANCE_ID, "orders-1"),
    (ENDPOINT, "10.0.0.1:8080"),
    (HTTP_PATH, "/health"),
    (METHOD_PATH, "orders/42"),
    (GRPC_METHOD, "/shop.v1.Orders/Get"),
    (HEADER_NAME, "X-Request-Id"),
    (PATH_STYLE, "/v1/state/get-many"),
    (NAME, "orders"),
    (TRUST_DOMAIN, "prod.example"),
]


@pytest.mark.parametrize(("pattern", "good"), CASES)
def test_a_trailing_newline_is_refused(pattern: re.Pattern[str], good: str) -> None:
    assert pattern.match(good)
    for bad in (good + "\n", good + "\r\n", good + "\n\n"):
        assert not pattern.match(bad), (pattern.pattern, bad)


def test_a_header_name_with_a_newline_never_reaches_an_instance() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        http_call(
            service="orders",
            method="x",
            verb="GET",
            query="",
            headers=[("X-A\n", "1")],
            body=b"",
            max_body=10,
        )
    assert [v.field for v in info.value.violations] == ["headers"]
    with pytest.raises(InvalidArgumentError) as info:
        http_call(
            service="orders\n", method="x", verb="GET", query="", headers=[], body=b"", max_body=10
        )
    assert [v.field for v in info.value.violations] == ["service"]
