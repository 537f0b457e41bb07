"""Which policy applies to a call: overrides per service and per route.

A :class:`PolicySet` holds the default :class:`~.policy.ResiliencePolicy` plus
overrides per service and per route, and :meth:`PolicySet.resolve` answers
"which policy applies to this call". :meth:`PolicySet.from_mapping` builds one
from an already parsed mapping (a TOML table, say); it does no I/O. Its shape::

    [resilience]                          # the default for every service
    retry.max_attempts = 3
    [resilience.service.orders]           # override for one service
    breaker.consecutive_failures = 3
    [resilience.service.orders.route."/orders.v1.Orders/Get"]
    timeout.default_s = 0.5               # override for one route (exact match)
    [resilience.service.orders.route."/admin/*"]
    retry.max_attempts = 1                # override for every route under a prefix

A route is what the call invokes: the gRPC full method name
(``/package.Service/Method``) or the HTTP method path after the service name.
An exact key wins over a ``prefix*`` key, and a longer prefix over a shorter.

An override names only the fields it changes; the rest is inherited (route
from service, service from default). A route may override only ``retry``,
``timeout`` and ``fallback``: breakers, outlier ejection, bulkheads, the retry
budget and balancing are kept per service (or per instance or region), so a
route value for them is rejected rather than silently ignored. Every problem
is reported in one :class:`~meridian.core.errors.ConfigError` whose fields are
dotted paths from the ``resilience`` table, with the rule each breaks.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meridian.core.errors import ConfigError, FieldViolation, InvalidArgumentError
from meridian.invocation.resilience.policy import ResiliencePolicy

#: The sections a route may override; the others are per service.
ROUTE_SECTIONS = frozenset({"retry", "timeout", "fallback"})


@dataclass(frozen=True)
class ServicePolicies:
    """One service's policy and its route overrides (already merged)."""

    policy: ResiliencePolicy
    #: Exact route → policy.
    routes: Mapping[str, ResiliencePolicy] = field(default_factory=dict)
    #: Route prefix (the key without its trailing ``*``) → policy, longest first.
    prefixes: tuple[tuple[str, ResiliencePolicy], ...] = ()


@dataclass(frozen=True)
class PolicySet:
    """The default policy, and overrides per service and per route."""

    default: ResiliencePolicy = field(default_factory=ResiliencePolicy)
    services: Mapping[str, ServicePolicies] = field(default_factory=dict)

    def resolve(self, service: str, route: str = "") -> ResiliencePolicy:
        """The policy for a call to ``service`` at ``route``.

        An exact route key wins; otherwise the longest matching ``prefix*`` key;
        otherwise the service's policy; otherwise the default.
        """
        svc = self.services.get(service)
        if svc is None:
            return self.default
        exact = svc.routes.get(route)
        if exact is not None:
            return exact
        for prefix, policy in svc.prefixes:
            if route.startswith(prefix):
                return policy
        return svc.policy

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, source: str = "") -> PolicySet:
        """Build from a parsed ``[resilience]`` table; raise :class:`ConfigError` listing every problem."""
        v: list[FieldViolation] = []
        top = dict(raw)
        services_raw = top.pop("service", {})
        default = _merge(ResiliencePolicy(), top, "resilience", v, allowed=None, also={"service"})
        services: dict[str, ServicePolicies] = {}
        if not isinstance(services_raw, Mapping):
            v.append(FieldViolation("resilience.service", "must be a table of services"))
            services_raw = {}
        for name, sraw in services_raw.items():
            spath = f"resilience.service.{name}"
            if not isinstance(sraw, Mapping):
                v.append(FieldViolation(spath, "must be a table"))
                continue
            sdict = dict(sraw)
            routes_raw = sdict.pop("route", {})
            spolicy = _merge(default, sdict, spath, v, allowed=None, also={"route"})
            exact: dict[str, ResiliencePolicy] = {}
            prefixes: list[tuple[str, ResiliencePolicy]] = []
            if not isinstance(routes_raw, Mapping):
                v.append(FieldViolation(f"{spath}.route", "must be a table of routes"))
                routes_raw = {}
            for route, rraw in routes_raw.items():
                rpath = f'{spath}.route."{route}"'
                if not isinstance(rraw, Mapping):
                    v.append(FieldViolation(rpath, "must be a table"))
                    continue
                rpolicy = _merge(spolicy, dict(rraw), rpath, v, allowed=ROUTE_SECTIONS)
                if route.endswith("*"):
                    prefixes.append((route[:-1], rpolicy))
                else:
                    exact[route] = rpolicy
            prefixes.sort(key=lambda p: len(p[0]), reverse=True)
            services[name] = ServicePolicies(spolicy, exact, tuple(prefixes))
        if v:
            raise ConfigError(v, source)
        return cls(default, services)


def _merge(
    base: ResiliencePolicy,
    raw: Mapping[str, Any],
    path: str,
    v: list[FieldViolation],
    *,
    allowed: frozenset[str] | None,
    also: set[str] | frozenset[str] = frozenset(),
) -> ResiliencePolicy:
    """``base`` with the sections in ``raw`` overridden; problems appended to ``v``.

    ``allowed`` limits the sections settable here (a route's); ``also`` names the
    other keys this level takes (``service``, ``route``), for the error message.
    """
    changes: dict[str, Any] = {}
    sections = {f.name for f in dataclasses.fields(ResiliencePolicy)}
    for name, section_raw in raw.items():
        spath = f"{path}.{name}"
        if name not in sections:
            here = ", ".join(sorted(set(sections if allowed is None else allowed) | also))
            v.append(FieldViolation(spath, f"unknown section; allowed here: {here}"))
            continue
        if allowed is not None and name not in allowed:
            v.append(
                FieldViolation(
                    spath, f"can't be set per route; only {', '.join(sorted(allowed))} can"
                )
            )
            continue
        if not isinstance(section_raw, Mapping):
            v.append(FieldViolation(spath, "must be a table"))
            continue
        section = _merge_section(getattr(base, name), section_raw, spath, v)
        if section is not None:
            changes[name] = section
    return dataclasses.replace(base, **changes)


def _merge_section(base: Any, raw: Mapping[str, Any], path: str, v: list[FieldViolation]) -> Any:
    hints = typing.get_type_hints(type(base))
    values: dict[str, Any] = {}
    before = len(v)
    for key, value in raw.items():
        if key not in hints:
            here = ", ".join(sorted(hints))
            v.append(FieldViolation(f"{path}.{key}", f"unknown setting; allowed here: {here}"))
            continue
        try:
            values[key] = _coerce(hints[key], value)
        except (TypeError, ValueError) as exc:
            v.append(FieldViolation(f"{path}.{key}", str(exc)))
    if len(v) > before:
        return None
    try:
        return dataclasses.replace(base, **values)
    except InvalidArgumentError as exc:
        v.extend(FieldViolation(f"{path}.{x.field}", x.rule) for x in exc.violations)
        return None


def _coerce(hint: Any, value: Any) -> Any:
    """Check a raw value against a field's type; raise TypeError/ValueError with the rule."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value)
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise TypeError("must be a list")
        return tuple(_coerce(item, x) for x in value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        names = ", ".join(repr(m.value) for m in hint)
        if not isinstance(value, str):
            raise TypeError(f"must be one of {names}")
        try:
            return hint(value)
        except ValueError:
            raise ValueError(f"must be one of {names}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError("must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError("must be a string")
        return value
    raise TypeError(f"unsupported setting type {hint!r}")  # pragma: no cover - a bug here
