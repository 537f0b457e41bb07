"""Walking the raw TOML tables while collecting every violation (see :mod:`meridian.config`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from meridian.core.errors import FieldViolation
from meridian.core.residency import TopicResidency


class Reader:
    """Walks the raw TOML tables, collecting violations instead of stopping at the first."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def bad(self, path: str, rule: str) -> None:
        self.violations.append(FieldViolation(path, rule))

    def table(self, raw: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, Mapping):
            self.bad(path, f"must be a table, got {type(value).__name__}")
            return {}
        return value

    def known(self, raw: Mapping[str, Any], allowed: set[str], path: str) -> None:
        for key in raw:
            if key not in allowed:
                where = f"{path}.{key}" if path else key
                choices = ", ".join(sorted(allowed))
                self.bad(where, f"unknown setting; allowed here: {choices}")

    def number(
        self,
        raw: Mapping[str, Any],
        key: str,
        path: str,
        default: float,
        *,
        low: float,
        high: float,
    ) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.bad(path, f"must be a number, got {value!r}")
            return default
        if not low <= value <= high:
            self.bad(path, f"must be between {low:g} and {high:g}, got {value!r}")
            return default
        return float(value)

    def integer(
        self,
        raw: Mapping[str, Any],
        key: str,
        path: str,
        default: int,
        *,
        low: int,
        high: int,
    ) -> int:
        """A whole number in ``low..high``: ``2.0``, ``"2"`` and ``true`` are refused, not truncated."""
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(path, f"must be an integer, got {value!r}")
            return default
        if not low <= value <= high:
            self.bad(path, f"must be an integer between {low} and {high}, got {value}")
            return default
        return value

    def port(self, raw: Mapping[str, Any], key: str, path: str, default: int) -> int:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(path, f"must be an integer port, got {value!r}")
            return default
        if not 1 <= value <= 65535:
            self.bad(path, f"port must be between 1 and 65535, got {value}")
            return default
        return value

    def string(self, raw: Mapping[str, Any], key: str, path: str, default: str) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str):
            self.bad(path, f"must be a string, got {value!r}")
            return default
        return value

    def boolean(self, raw: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = raw.get(key, default)
        if not isinstance(value, bool):
            self.bad(path, f"must be true or false; got {value!r:.60}")
            return default
        return value


def residency_list(rd: Reader, raw: Any, path: str, regions: Sequence[str]) -> tuple[str, ...]:
    """A residency: a non-empty list of declared regions, each named once."""
    if not isinstance(raw, list) or not raw or not all(isinstance(r, str) for r in raw):
        rd.bad(path, "must be a non-empty array of region names")
        return ()
    unknown = [r for r in raw if r not in regions]
    if unknown:
        rd.bad(
            path,
            f"names regions that are not declared: {', '.join(repr(r[:40]) for r in unknown)}; "
            f"declared: {', '.join(regions)}",
        )
        return ()
    if len(set(raw)) != len(raw):
        rd.bad(path, "names a region twice")
        return ()
    return tuple(raw)


def residency_tables(
    rd: Reader,
    raw: Any,
    path: str,
    regions: Sequence[str],
    name_rule: Callable[[object], str | None],
) -> list[TopicResidency]:
    """An array of ``{name, residency}`` tables (``[[topic]]``,
    ``[[idempotency.scope]]``): each name unique and passing ``name_rule``
    (which returns the broken rule, or None), each residency a list of
    declared regions."""
    if not isinstance(raw, list):
        rd.bad(path, f"must be an array of [[{path}]] tables")
        return []
    out: list[TopicResidency] = []
    for i, entry in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(entry, Mapping):
            rd.bad(where, "must be a table with a name and a residency")
            continue
        rd.known(entry, {"name", "residency"}, where)
        name = entry.get("name")
        broken = name_rule(name)
        if broken is not None or not isinstance(name, str):
            rd.bad(f"{where}.name", broken or "must be a string")
            continue
        if any(t.name == name for t in out):
            rd.bad(f"{where}.name", f"{name!r} is already declared")
            continue
        if "residency" not in entry:
            rd.bad(f"{where}.residency", "is required: the regions that may hold the data")
            continue
        residency = residency_list(rd, entry["residency"], f"{where}.residency", regions)
        if residency:
            out.append(TopicResidency(name, residency))
    return out
