"""Shared test helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

# Harness modules that test modules also load as plugins (pytest_plugins):
# rewritten on first import, so their asserts explain themselves.
pytest.register_assert_rewrite("tests.integration.gateway_harness")

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    timeout_s: float = 60.0,
    interval_s: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until ``accept`` holds. The timeout is a hang guard, not a speed check."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if accept(last):
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"{what} never held within {timeout_s}s; last value: {last!r}")
