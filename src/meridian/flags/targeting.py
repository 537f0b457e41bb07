"""flagd's targeting rules: the JsonLogic subset flagd evaluates, checked and run.

Pure. The rules are JsonLogic, run by ``panzi-json-logic`` (a pure-Python
JsonLogic implementation) with flagd's own operators added:

- ``fractional``: sticky percentage buckets. The bucketing value is the first
  argument when it is a string, else the flag key followed by the context's
  ``targetingKey``; it is hashed with MurmurHash3 (x86, 32-bit, seed 0, from
  ``mmh3``) and mapped onto the summed integer weights as flagd does:
  ``bucket = hash * total >> 32``, the first variant whose running weight
  exceeds the bucket wins. So a user keeps their variant when its percentage
  grows, and Go, Rust and Python agree (``testdata/flag_bucketing.json``).
- ``sem_ver``: ``[version, op, version]`` with ``=``, ``!=``, ``<``, ``<=``,
  ``>``, ``>=``, ``^`` (same major) and ``~`` (same major and minor), versions
  parsed by ``semver`` (a leading ``v`` allowed).
- ``starts_with`` and ``ends_with`` on strings.

A rule is checked when a flag is stored (:func:`check_rule`): only the
operators of :data:`OPERATORS`, at most :data:`MAX_DEPTH` levels deep, and
fractional distributions that name defined variants with whole, non-negative
weights. What is refused is named by its path in the definition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import mmh3
import semver
from json_logic import jsonLogic
from json_logic.builtins import BUILTINS, not_, to_bool

from meridian.core.errors import FieldViolation

#: The operators a targeting rule may use: flagd's subset of JsonLogic.
OPERATORS: frozenset[str] = frozenset(
    {
        "if",
        "==",
        "===",
        "!=",
        "!==",
        "<",
        "<=",
        ">",
        ">=",
        "!",
        "!!",
        "and",
        "or",
        "in",
        "var",
        "missing",
        "cat",
        "substr",
        "starts_with",
        "ends_with",
        "sem_ver",
        "fractional",
    }
)

#: Deepest nesting of a rule (a deeper one is refused, so evaluation can't
#: exhaust the stack).
MAX_DEPTH = 32

#: The largest sum of a fractional distribution's weights (flagd's: int32).
MAX_WEIGHT_SUM = 2**31 - 1

SEMVER_OPERATORS = frozenset({"=", "!=", "<", "<=", ">", ">=", "^", "~"})

#: Where the flag key goes in the evaluation data, as in flagd.
FLAGD = "$flagd"


def murmur3_32(text: str) -> int:
    """MurmurHash3 x86 32-bit of ``text`` (UTF-8), seed 0, unsigned."""
    return int(mmh3.hash(text.encode(), 0, signed=False))


def distribute(bucket_by: str, weights: Iterable[tuple[Any, int]]) -> Any:
    """The variant ``bucket_by`` falls in, given ``(variant, weight)`` pairs;
    None when every weight is 0."""
    pairs = list(weights)
    total = sum(w for _, w in pairs)
    if total <= 0:
        return None
    bucket = (murmur3_32(bucket_by) * total) >> 32
    end = 0
    for variant, weight in pairs:
        end += weight
        if bucket < end:
            return variant
    return None  # unreachable: bucket < total


def _weight(entry: list[Any]) -> int | None:
    if len(entry) < 2 or entry[1] is None:
        return 1
    w = entry[1]
    if isinstance(w, bool) or not isinstance(w, int | float) or w != int(w) or w < 0:
        return None
    return int(w)


def _fractional(data: Any, *args: Any) -> Any:
    if not args:
        return None
    rest = list(args)
    if isinstance(rest[0], str):
        bucket_by = rest.pop(0)
    else:
        if rest[0] is None:
            rest.pop(0)
        props = data.get(FLAGD) if isinstance(data, dict) else None
        targeting_key = data.get("targetingKey") if isinstance(data, dict) else None
        if not isinstance(props, dict) or not isinstance(targeting_key, str):
            return None  # nothing to bucket by: the default variant
        bucket_by = f"{props.get('flagKey', '')}{targeting_key}"
    pairs: list[tuple[Any, int]] = []
    for entry in rest:
        if not isinstance(entry, list) or not entry:
            return None
        weight = _weight(entry)
        if weight is None:
            return None
        pairs.append((entry[0], weight))
    if sum(w for _, w in pairs) > MAX_WEIGHT_SUM:
        return None
    return distribute(bucket_by, pairs)


def _parse_version(value: Any) -> semver.Version | None:
    if not isinstance(value, str):
        return None
    text = value[1:] if value[:1] in ("v", "V") else value
    try:
        return semver.Version.parse(text, optional_minor_and_patch=True)
    except (ValueError, TypeError):
        return None


def _sem_ver(data: Any, left: Any = None, op: Any = None, right: Any = None, *_: Any) -> bool:
    a, b = _parse_version(left), _parse_version(right)
    if a is None or b is None or op not in SEMVER_OPERATORS:
        return False
    order = a.compare(b)
    if op == "=":
        return order == 0
    if op == "!=":
        return order != 0
    if op == "<":
        return order < 0
    if op == "<=":
        return order <= 0
    if op == ">":
        return order > 0
    if op == ">=":
        return order >= 0
    if op == "^":
        return a.major == b.major
    return a.major == b.major and a.minor == b.minor  # "~"


def _starts_with(data: Any, text: Any = None, prefix: Any = None, *_: Any) -> bool:
    return isinstance(text, str) and isinstance(prefix, str) and text.startswith(prefix)


def _ends_with(data: Any, text: Any = None, suffix: Any = None, *_: Any) -> bool:
    return isinstance(text, str) and isinstance(suffix, str) and text.endswith(suffix)


_CUSTOM: Mapping[str, Callable[..., Any]] = {
    "fractional": _fractional,
    "sem_ver": _sem_ver,
    "starts_with": _starts_with,
    "ends_with": _ends_with,
}

#: The operations evaluation runs with: only the subset, so a rule stored by
#: another version with an operator this one does not know fails to evaluate
#: instead of running something else.
_OPERATIONS: dict[str, Any] = {
    name: fn for name, fn in {**BUILTINS, **_CUSTOM}.items() if name in OPERATORS
}


def run(rule: Any, data: Mapping[str, Any]) -> Any:
    """The rule's result for ``data``, by ``panzi-json-logic``'s interpreter.
    Raises on a rule that can't be run (ReferenceError for an operator outside
    the subset, TypeError, ...)."""
    return jsonLogic(rule, data if isinstance(data, dict) else dict(data), _OPERATIONS)


Compiled = Callable[[dict[str, Any]], Any]


def compile_rule(rule: Any) -> Compiled:
    """``rule`` as a function of the data, giving what :func:`run` gives.

    The interpreter walks the rule's tree on every evaluation (some 7 µs for a
    region check around a ``fractional``; a bulk evaluation runs one per
    flag). This walks it once, into closures over the same operations
    (``panzi-json-logic``'s builtins and flagd's), with the interpreter's
    special forms (``if``, ``and``, ``or``) written the way it evaluates them;
    a property test holds it to :func:`run` on generated rules. Raises
    ReferenceError for an operator outside the subset, as :func:`run` does
    when it reaches it (checked rules have none)."""
    if isinstance(rule, list):
        items = [compile_rule(r) for r in rule]
        return lambda data: [f(data) for f in items]
    if not isinstance(rule, dict) or len(rule) != 1:
        return lambda data: rule
    op, raw = next(iter(rule.items()))
    args = [compile_rule(a) for a in (raw if isinstance(raw, list) else [raw])]
    if op == "if":
        return _compile_if(args)
    if op == "and":
        return _compile_and(args)
    if op == "or":
        return _compile_or(args)
    fn = _OPERATIONS.get(op)
    if fn is None:
        raise ReferenceError(f"Unrecognized operation: {op!r}")
    if len(args) == 1:
        only = args[0]
        return lambda data: fn(data, only(data))
    return lambda data: fn(data, *[a(data) for a in args])


def _compile_if(args: list[Compiled]) -> Compiled:
    def run_if(data: dict[str, Any]) -> Any:
        last = len(args) - 1
        i = 0
        while i < last:
            if to_bool(args[i](data)):
                return args[i + 1](data)
            i += 2
        return args[i](data) if i < len(args) else None

    return run_if


def _compile_and(args: list[Compiled]) -> Compiled:
    def run_and(data: dict[str, Any]) -> Any:
        current = None
        for a in args:
            current = a(data)
            if not_(current):
                return current
        return current

    return run_and


def _compile_or(args: list[Compiled]) -> Compiled:
    def run_or(data: dict[str, Any]) -> Any:
        current = None
        for a in args:
            current = a(data)
            if to_bool(current):
                return current
        return current

    return run_or


def check_rule(rule: Any, variants: Mapping[str, Any], field: str) -> list[FieldViolation]:
    """What is wrong with ``rule`` as a targeting rule, each named by its path."""
    out: list[FieldViolation] = []
    _check(rule, variants, field, 1, out)
    return out


def _check(
    node: Any, variants: Mapping[str, Any], path: str, depth: int, out: list[FieldViolation]
) -> None:
    if len(out) >= 20:
        return
    if depth > MAX_DEPTH:
        out.append(FieldViolation(path, f"nests deeper than {MAX_DEPTH} levels"))
        return
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check(item, variants, f"{path}[{i}]", depth + 1, out)
        return
    if not isinstance(node, dict) or len(node) != 1:
        if isinstance(node, dict) and node:
            out.append(
                FieldViolation(path, 'an object in a rule must be one operation: {"op": [args]}')
            )
        return
    op, args = next(iter(node.items()))
    where = f"{path}.{op}"
    if op == "$ref":
        out.append(FieldViolation(where, "names an evaluator that is not defined in $evaluators"))
        return
    if op not in OPERATORS:
        out.append(
            FieldViolation(
                where,
                f"is not an operator flagd evaluates; use one of {', '.join(sorted(OPERATORS))}",
            )
        )
        return
    if op == "fractional":
        _check_fractional(args, variants, where, out)
    if (
        op == "sem_ver"
        and isinstance(args, list)
        and len(args) == 3
        and isinstance(args[1], str)
        and args[1] not in SEMVER_OPERATORS
    ):
        out.append(
            FieldViolation(f"{where}[1]", f"must be one of {', '.join(sorted(SEMVER_OPERATORS))}")
        )
    _check(args, variants, where, depth + 1, out)


def _check_fractional(
    args: Any, variants: Mapping[str, Any], where: str, out: list[FieldViolation]
) -> None:
    if not isinstance(args, list) or not args:
        out.append(FieldViolation(where, "must be a list: [bucket-by?, [variant, weight], ...]"))
        return
    start = 0 if isinstance(args[0], list) else 1
    total = 0
    for i, entry in enumerate(args[start:], start):
        at = f"{where}[{i}]"
        if not isinstance(entry, list) or not entry:
            out.append(FieldViolation(at, "must be [variant, weight]"))
            continue
        name = entry[0]
        if isinstance(name, str) and name not in variants:
            out.append(
                FieldViolation(
                    f"{at}[0]", f"names variant {name[:64]!r}, which the flag does not define"
                )
            )
        weight = _weight(entry)
        if weight is None:
            out.append(FieldViolation(f"{at}[1]", "must be a whole number, at least 0"))
            continue
        total += weight
    if total > MAX_WEIGHT_SUM:
        out.append(FieldViolation(where, f"weights sum to {total}; at most {MAX_WEIGHT_SUM}"))
    if start == len(args):
        out.append(FieldViolation(where, "needs at least one [variant, weight]"))
