"""Feature flags: flagd's flag format, checked, stored and evaluated.

Pure. A flag is what flagd calls one entry of ``flags``::

    {"state": "ENABLED",
     "variants": {"on": true, "off": false},
     "defaultVariant": "off",
     "targeting": {"if": [{"==": [{"var": "region"}, "ap-south"]}, "on"]},
     "metadata": {"owner": "orders"}}

Evaluation follows flagd and OpenFeature's reasons:

- no targeting (absent or ``{}``): the default variant, ``STATIC``;
- targeting that returns a variant's name (or ``true``/``false`` for variants
  named so): that variant, ``TARGETING_MATCH``; one that returns ``null``:
  the default variant, ``DEFAULT``; one that names no variant, or fails:
  ``ERROR`` with ``GENERAL``;
- a flag whose ``state`` is ``DISABLED``: the default variant, ``DISABLED``;
  a killed flag (:class:`StoredFlag`): its off variant, ``DISABLED``;
- an unknown flag: ``ERROR`` with ``FLAG_NOT_FOUND``.

The evaluation context is the caller's, plus ``region`` (the serving region,
replacing any the caller sent) and ``$flagd.flagKey`` / ``$flagd.timestamp``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import rfc8785

from meridian.core.errors import FieldViolation, InvalidArgumentError
from meridian.flags.targeting import FLAGD, Compiled, check_rule, compile_rule, run

#: A flag's key: what OFREP puts in a URL path, so no slashes or spaces.
FLAG_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
#: The largest definition accepted (its JSON, UTF-8).
MAX_DEFINITION_BYTES = 64 * 1024
MAX_VARIANTS = 256
MAX_METADATA_ENTRIES = 64
#: The largest evaluation context (its JSON), and its deepest nesting.
MAX_CONTEXT_BYTES = 64 * 1024
MAX_CONTEXT_DEPTH = 16

STATES = ("ENABLED", "DISABLED")
DEFINITION_FIELDS = frozenset({"state", "variants", "defaultVariant", "targeting", "metadata"})

NO_METADATA: Mapping[str, Any] = MappingProxyType({})

# OpenFeature's reasons and error codes, as OFREP spells them.
STATIC = "STATIC"
DEFAULT = "DEFAULT"
TARGETING_MATCH = "TARGETING_MATCH"
DISABLED = "DISABLED"
ERROR = "ERROR"
FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
GENERAL = "GENERAL"
INVALID_CONTEXT = "INVALID_CONTEXT"
PARSE_ERROR = "PARSE_ERROR"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object"


@dataclass(frozen=True)
class FlagDefinition:
    """One flag in flagd's format, checked (see :func:`parse_definition`)."""

    state: str
    variants: Mapping[str, Any]
    default_variant: str
    targeting: Any = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: ``targeting`` compiled (:func:`~meridian.flags.targeting.compile_rule`).
    compiled: Compiled | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.targeting and self.compiled is None:
            object.__setattr__(self, "compiled", compile_rule(self.targeting))

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "state": self.state,
            "variants": dict(self.variants),
            "defaultVariant": self.default_variant,
        }
        if self.targeting:
            doc["targeting"] = self.targeting
        if self.metadata:
            doc["metadata"] = dict(self.metadata)
        return doc

    def canonical(self) -> str:
        return rfc8785.dumps(self.to_json()).decode()

    def off_variant(self, requested: str = "", field_name: str = "variant") -> str:
        """The variant a kill serves: ``requested``, else the one named "off",
        else the one variant whose value is ``false``; InvalidArgumentError
        naming ``field_name`` when there is none."""
        if requested:
            if requested not in self.variants:
                raise InvalidArgumentError(
                    FieldViolation(
                        field_name,
                        f"{requested[:64]!r} is not a variant of the flag; "
                        f"it has {', '.join(sorted(self.variants))}",
                    )
                )
            return requested
        if "off" in self.variants:
            return "off"
        falses = [k for k, v in self.variants.items() if v is False]
        if len(falses) == 1:
            return falses[0]
        raise InvalidArgumentError(
            FieldViolation(
                field_name,
                "is required: the flag has no variant named 'off' and not exactly one "
                "variant whose value is false",
            )
        )


def key_violations(key: object, field_name: str = "key") -> list[FieldViolation]:
    if not isinstance(key, str) or not key:
        return [FieldViolation(field_name, "is required")]
    if not FLAG_KEY.fullmatch(key):
        return [
            FieldViolation(
                field_name,
                "must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit",
            )
        ]
    return []


def parse_definition(doc: Any, field_name: str = "definition") -> FlagDefinition:
    """``doc`` (decoded JSON) as a flag; InvalidArgumentError naming each
    field that breaks a rule."""
    v: list[FieldViolation] = []
    if not isinstance(doc, dict):
        raise InvalidArgumentError(FieldViolation(field_name, "must be a JSON object"))
    for extra in sorted(set(doc) - DEFINITION_FIELDS)[:5]:
        v.append(
            FieldViolation(
                f"{field_name}.{extra}"[:200],
                f"is not a field of a flag; use {', '.join(sorted(DEFINITION_FIELDS))}",
            )
        )
    state = doc.get("state", "ENABLED")
    if state not in STATES:
        v.append(FieldViolation(f"{field_name}.state", "must be ENABLED or DISABLED"))
    variants = doc.get("variants")
    if not isinstance(variants, dict) or not variants:
        v.append(FieldViolation(f"{field_name}.variants", "must be a non-empty object"))
        variants = {}
    elif len(variants) > MAX_VARIANTS:
        v.append(FieldViolation(f"{field_name}.variants", f"at most {MAX_VARIANTS} variants"))
    else:
        kinds = {_kind(value) for value in variants.values()}
        if len(kinds) > 1:
            v.append(
                FieldViolation(
                    f"{field_name}.variants",
                    f"must all be of one type (boolean, string, number or object); "
                    f"got {', '.join(sorted(kinds))}",
                )
            )
        for name, value in variants.items():
            if not name:
                v.append(
                    FieldViolation(f"{field_name}.variants", "a variant's name can't be empty")
                )
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                v.append(
                    FieldViolation(
                        f"{field_name}.variants.{name[:64]}", "must be a JSON value, not null"
                    )
                )
    default = doc.get("defaultVariant")
    if not isinstance(default, str):
        v.append(FieldViolation(f"{field_name}.defaultVariant", "is required: a variant's name"))
        default = ""
    elif variants and default not in variants:
        v.append(
            FieldViolation(
                f"{field_name}.defaultVariant",
                f"{default[:64]!r} is not a variant of the flag; it has "
                f"{', '.join(sorted(variants))[:300]}",
            )
        )
    targeting = doc.get("targeting")
    if targeting is not None and not isinstance(targeting, dict):
        v.append(FieldViolation(f"{field_name}.targeting", "must be a JsonLogic object"))
    elif targeting:
        v.extend(check_rule(targeting, variants, f"{field_name}.targeting"))
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict):
        v.append(FieldViolation(f"{field_name}.metadata", "must be an object"))
        metadata = {}
    elif len(metadata) > MAX_METADATA_ENTRIES:
        v.append(
            FieldViolation(f"{field_name}.metadata", f"at most {MAX_METADATA_ENTRIES} entries")
        )
    else:
        for name, value in metadata.items():
            if not isinstance(value, str | bool | int | float):
                v.append(
                    FieldViolation(
                        f"{field_name}.metadata.{name[:64]}", "must be a string, number or boolean"
                    )
                )
    if v:
        raise InvalidArgumentError(v)
    return FlagDefinition(str(state), dict(variants), default, targeting or None, dict(metadata))


def _no_constants(text: str) -> float:
    raise ValueError(f"{text} is not JSON")


def decode_json(text: str | bytes, field_name: str, max_bytes: int) -> Any:
    """``text`` as JSON; InvalidArgumentError naming ``field_name`` when it is
    too large, not JSON, or nests too deeply."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > max_bytes:
        raise InvalidArgumentError(
            FieldViolation(field_name, f"is {size} bytes; at most {max_bytes}")
        )
    try:
        return json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgumentError(
            FieldViolation(field_name, f"is not valid JSON: {exc}"[:300])
        ) from None


def parse_definition_json(text: str, field_name: str = "definition") -> FlagDefinition:
    return parse_definition(decode_json(text, field_name, MAX_DEFINITION_BYTES), field_name)


def _resolve_refs(node: Any, evaluators: Mapping[str, Any], depth: int = 0) -> Any:
    """``node`` with each ``{"$ref": name}`` replaced by that shared evaluator."""
    if depth > 32:
        raise InvalidArgumentError(FieldViolation("$evaluators", "refer to each other too deeply"))
    if isinstance(node, list):
        return [_resolve_refs(n, evaluators, depth + 1) for n in node]
    if isinstance(node, dict):
        if len(node) == 1 and "$ref" in node and isinstance(node["$ref"], str):
            name = node["$ref"]
            if name not in evaluators:
                raise InvalidArgumentError(
                    FieldViolation(f"$ref.{name[:64]}", "is not defined in $evaluators")
                )
            return _resolve_refs(evaluators[name], evaluators, depth + 1)
        return {k: _resolve_refs(v, evaluators, depth + 1) for k, v in node.items()}
    return node


def parse_flagd_file(
    text: str, max_bytes: int = 4 * MAX_DEFINITION_BYTES
) -> dict[str, FlagDefinition]:
    """A flagd flag file (``{"flags": {...}, "$evaluators": {...}}``) as its
    flags, shared evaluators inlined; InvalidArgumentError naming each field."""
    doc = decode_json(text, "file", max_bytes)
    if not isinstance(doc, dict) or not isinstance(doc.get("flags"), dict):
        raise InvalidArgumentError(
            FieldViolation("flags", "is required: an object of flags by key")
        )
    evaluators = doc.get("$evaluators", {})
    if not isinstance(evaluators, dict):
        raise InvalidArgumentError(FieldViolation("$evaluators", "must be an object"))
    out: dict[str, FlagDefinition] = {}
    violations: list[FieldViolation] = []
    for key, flag in doc["flags"].items():
        violations.extend(key_violations(key, f"flags.{key[:64]}"))
        try:
            resolved = _resolve_refs(flag, evaluators)
            out[key] = parse_definition(resolved, f"flags.{key[:64]}")
        except InvalidArgumentError as exc:
            violations.extend(exc.violations)
    if violations:
        raise InvalidArgumentError(violations)
    return out


@dataclass(frozen=True)
class StoredFlag:
    """A flag as stored: its definition, who stored it, when (ms since the
    epoch), and the variant it is killed to ("" when it is not killed)."""

    definition: FlagDefinition
    author: str
    updated_ms: int
    killed_variant: str = ""

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "flag": self.definition.to_json(),
            "author": self.author,
            "updated_ms": self.updated_ms,
        }
        if self.killed_variant:
            doc["killed_variant"] = self.killed_variant
        return rfc8785.dumps(doc)

    @classmethod
    def decode(cls, data: bytes) -> StoredFlag:
        """InvalidArgumentError or ValueError when ``data`` is not a stored flag
        this version can evaluate."""
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a stored flag")
        definition = parse_definition(doc.get("flag"), "flag")
        killed = doc.get("killed_variant", "")
        if killed and killed not in definition.variants:
            raise ValueError(f"killed to an unknown variant {killed!r}")
        return cls(
            definition, str(doc.get("author", "")), int(doc.get("updated_ms", 0)), str(killed)
        )


class Evaluation(NamedTuple):
    """One flag evaluated: OpenFeature's resolution details. (A tuple: a bulk
    evaluation makes one per flag, and a frozen dataclass costs several times
    as much to build.)"""

    key: str
    value: Any = None
    variant: str = ""
    reason: str = ERROR
    error_code: str = ""
    error_details: str = ""
    metadata: Mapping[str, Any] = NO_METADATA

    @property
    def failed(self) -> bool:
        return self.reason == ERROR


def not_found(key: str) -> Evaluation:
    return Evaluation(key, error_code=FLAG_NOT_FOUND, error_details=f"flag {key!r} is not defined")


def context_violations(context: Any, field_name: str = "context") -> list[FieldViolation]:
    """What makes ``context`` unusable: not an object, or nested too deeply."""
    if not isinstance(context, dict):
        return [FieldViolation(field_name, "must be a JSON object")]
    stack: list[tuple[Any, int]] = [(context, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_CONTEXT_DEPTH:
            return [FieldViolation(field_name, f"nests deeper than {MAX_CONTEXT_DEPTH} levels")]
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return []


def evaluation_data(context: Mapping[str, Any], region: str) -> dict[str, Any]:
    """The data targeting sees: the caller's context and the serving region."""
    data = dict(context)
    data["region"] = region
    return data


def evaluate(
    key: str, flag: StoredFlag | None, context: Mapping[str, Any], *, region: str, now_s: int
) -> Evaluation:
    """Evaluate ``flag`` (None: not defined) for ``context`` in ``region``."""
    return evaluate_in(key, flag, evaluation_data(context, region), now_s)


def evaluate_in(key: str, flag: StoredFlag | None, data: dict[str, Any], now_s: int) -> Evaluation:
    """:func:`evaluate` with the data made once (:func:`evaluation_data`), for
    evaluating many flags; sets ``data["$flagd"]`` to this flag's."""
    if flag is None:
        return not_found(key)
    d = flag.definition
    meta = d.metadata
    if flag.killed_variant:
        v = flag.killed_variant
        return Evaluation(key, d.variants[v], v, DISABLED, metadata=meta)
    if d.state == "DISABLED":
        v = d.default_variant
        return Evaluation(key, d.variants[v], v, DISABLED, metadata=meta)
    if not d.targeting:
        v = d.default_variant
        return Evaluation(key, d.variants[v], v, STATIC, metadata=meta)
    data[FLAGD] = {"flagKey": key, "timestamp": now_s}
    try:
        result = d.compiled(data) if d.compiled is not None else run(d.targeting, data)
    except Exception as exc:  # any failure of a stored rule is this evaluation's error
        return Evaluation(
            key, error_code=GENERAL, error_details=f"targeting failed: {exc}"[:300], metadata=meta
        )
    if result is None:
        v = d.default_variant
        return Evaluation(key, d.variants[v], v, DEFAULT, metadata=meta)
    name = ("true" if result else "false") if isinstance(result, bool) else result
    if not isinstance(name, str) or name not in d.variants:
        shown = json.dumps(result)[:64] if not isinstance(result, str) else repr(result[:64])
        return Evaluation(
            key,
            error_code=GENERAL,
            error_details=f"targeting returned {shown}, which is not a variant of the flag",
            metadata=meta,
        )
    return Evaluation(key, d.variants[name], name, TARGETING_MATCH, metadata=meta)
