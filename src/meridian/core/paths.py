"""Which agent paths the gateway exposes: an allow-list of routes (pure rules).

A pattern is an exact path (``/v1/health``) or a prefix ending in ``/*``
(``/v1/invoke/*``: everything below ``/v1/invoke/``; ``/*`` alone passes every
path, for a gateway that is not a front door). Patterns are checked
when the configuration loads; a request path is checked *as sent* (before any
decoding), and one that an agent could read as another path (dot segments,
also spelt with encoded ``.``, ``/`` or ``\\``; empty segments) is refused
whatever the list says, so ``/v1/invoke/x/../../state/put`` never reaches the state API.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from meridian.core.errors import FieldViolation

#: What a front door exposes unless configured otherwise: invocation and health.
DEFAULT_ALLOW = ("/v1/invoke/*", "/v1/health")
MAX_PATTERNS = 64
MAX_PATTERN_CHARS = 200
_PATTERN = re.compile(r"(/[a-z0-9][a-z0-9_-]*)+(/\*)?\Z|/\*\Z")
#: Encodings of '/' and '\\' (any case), and backslashes: separators to a lenient reader.
_SEPARATOR = re.compile(r"%2f|%5c|\\", re.IGNORECASE)
_DOT = re.compile(r"%2e", re.IGNORECASE)


def allow_violations(patterns: object, field: str) -> list[FieldViolation]:
    """What is wrong with a configured allow-list, naming ``field[i]``."""
    if not isinstance(patterns, list | tuple):
        return [FieldViolation(field, 'must be a list of paths such as "/v1/invoke/*"')]
    if len(patterns) > MAX_PATTERNS:
        return [FieldViolation(field, f"at most {MAX_PATTERNS} patterns; got {len(patterns)}")]
    out = []
    for i, p in enumerate(patterns):
        if not isinstance(p, str) or len(p) > MAX_PATTERN_CHARS or not _PATTERN.fullmatch(p):
            out.append(
                FieldViolation(
                    f"{field}[{i}]",
                    "must be a path of lowercase segments (a-z, 0-9, '-', '_'), optionally "
                    f"ending in /* for everything below it; got {str(p)[:60]!r}",
                )
            )
    return out


def refusal(raw_path: str, allow: Sequence[str]) -> str | None:
    """Why ``raw_path`` (the request's path as sent, without the query) may not
    pass; None when an ``allow`` pattern admits it."""
    # The path as the most lenient reader would split it: encoded separators and
    # dots decoded. An encoded '/' in a name is fine; one that makes '..' is not.
    segments = _DOT.sub(".", _SEPARATOR.sub("/", raw_path)).split("/")[1:]
    if (
        not raw_path.startswith("/")
        or any(s in (".", "..") for s in segments)
        or "" in segments[:-1]
    ):
        return f"path {raw_path[:80]!r} is not a plain path (dot segments or encoded separators)"
    for pattern in allow:
        if pattern.endswith("/*"):
            if raw_path.startswith(pattern[:-1]):
                return None
        elif raw_path == pattern:
            return None
    return f"{raw_path[:80]} is not exposed by the gateway (gateway.allow)"
