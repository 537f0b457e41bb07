"""docs/configuration.md documents every table, key and default the loader has.

Nothing here is a copy of the configuration: the keys of each table come from
the loader itself (each table is probed with an unknown key, and the "allowed
here: ..." list of the error is read back), and the defaults
from the configuration the loader builds when a key is left out. A derived
default such as ``base_port + 100 * i + 20`` is evaluated against a file that
moves ``base_port`` and ``wan.jitter_ms`` off their defaults, so it must state
the real rule. *required* is checked by leaving the key out, *unset* by finding
no value in the model.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import enum
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from meridian.config import MeridianConfig, parse_config
from meridian.core.errors import ConfigError
from meridian.invocation.resilience import ResiliencePolicy

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
# Relative paths in the file are taken from here; defaults are shown relative to it.
BASE_DIR = Path("/probe")
PROBE_KEY = "zz_probe"

# The smallest file that has one of each array table, so each can be probed.
PROBE: dict[str, Any] = {
    "region": [{"name": "aa"}, {"name": "bb"}],
    "wan": {"link": [{"a": "aa", "b": "bb", "latency_ms": 5}]},
    "keyspace": [{"name": "ks"}],
    "topic": [{"name": "tt", "residency": ["aa"]}],
    "idempotency": {"scope": [{"name": "ss", "residency": ["aa"]}]},
}
# The settings derived defaults may name, moved off their own defaults: a fixed
# default must not follow them, a derived one must.
SHIFTED = {"sandbox.base_port": 20000, "wan.jitter_ms": 7.5}
# Derived defaults are read from this region, so that `i` counts.
SHIFTED_REGION = 1
# The names a derived default may use.
NAMES = {"base_port": SHIFTED["sandbox.base_port"], "wan.jitter_ms": SHIFTED["wan.jitter_ms"]}

HEADING = re.compile(r"^#{2,6}\s+`\[\[?([a-z_.]+)\]\]?`")
CELL_SPLIT = re.compile(r"(?<!\\)\|")
CODE = re.compile(r"`([^`]+)`")


# -- the document --------------------------------------------------------------------


@dataclass
class Reference:
    """What the document says: per table (dotted, no brackets), key -> default cell."""

    tables: dict[str, dict[str, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def parse_reference(text: str) -> Reference:
    """Read each ``## `[table]` `` section and the ``| key | default | ...`` table under it.

    A heading that is not a TOML table (``## Environment``) ends the section
    before it; its tables are not read.
    """
    ref = Reference()
    table: str | None = None
    columns: dict[str, int] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            match = HEADING.match(line)
            table = match.group(1) if match else None
            columns = None
            if table is not None:
                if table in ref.tables:
                    ref.problems.append(f"line {number}: [{table}] is documented twice")
                ref.tables.setdefault(table, {})
            continue
        if table is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in CELL_SPLIT.split(line.strip().strip("|"))]
        if columns is None:
            if cells[:1] == ["key"]:
                columns = {name: i for i, name in enumerate(cells)}
                if "default" not in columns:
                    ref.problems.append(f"line {number}: the table of [{table}] has no default")
                    table = None
            continue
        if all(set(c) <= set("-: ") for c in cells):
            continue  # the |---|---| line
        key_cell = cells[columns["key"]]
        key = CODE.fullmatch(key_cell)
        if key is None or len(cells) < len(columns):
            ref.problems.append(f"line {number}: expected | `key` | default | ...; got {line!r}")
            continue
        rows = ref.tables[table]
        if key.group(1) in rows:
            ref.problems.append(f"line {number}: {table}.{key.group(1)} is documented twice")
        rows[key.group(1)] = cells[columns["default"]]
    return ref


@dataclass(frozen=True)
class Default:
    """A default cell, understood: ``kind`` is value, derived, required or unset."""

    kind: str
    value: Any = None


def parse_default(cell: str) -> Default:
    """`1.5` or `"info"` (a TOML value), `base_port + 90` (derived), *required*, *unset*."""
    if cell in ("*required*", "*unset*"):
        return Default(cell.strip("*"))
    match = CODE.fullmatch(cell)
    if match is None:
        raise ValueError(
            f"write the default as a `TOML value`, a `derived + expression`, *required* or "
            f"*unset*; got {cell!r}"
        )
    try:
        return Default("value", tomllib.loads(f"v = {match.group(1)}")["v"])
    except tomllib.TOMLDecodeError:
        return Default("derived", match.group(1))


def evaluate(expression: str, names: Mapping[str, float]) -> float:
    """``expression`` of numbers, ``+``, ``-``, ``*`` and ``names`` (which may be dotted)."""

    def value(node: ast.expr) -> float:
        constant = node.value if isinstance(node, ast.Constant) else None
        if isinstance(constant, int | float) and not isinstance(constant, bool):
            return float(constant)
        if isinstance(node, ast.Name | ast.Attribute) and ast.unparse(node) in names:
            return names[ast.unparse(node)]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            return left - right if isinstance(node.op, ast.Sub) else left * right
        raise ValueError(
            f"{expression!r}: a derived default may use numbers, + - * and "
            f"{', '.join(sorted(names))}"
        )

    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        raise ValueError(f"{expression!r} is neither a TOML value nor an expression") from None
    return value(tree.body)


# -- the loader and the model ----------------------------------------------------------


def load(raw: Mapping[str, Any]) -> MeridianConfig:
    return parse_config(raw, env={}, base_dir=BASE_DIR)


def violations(raw: Mapping[str, Any]) -> dict[str, list[str]]:
    """The loader's violations of ``raw``: field path -> rules."""
    found: dict[str, list[str]] = {}
    try:
        load(raw)
    except ConfigError as exc:
        for v in exc.violations:
            found.setdefault(v.field, []).append(v.rule)
    return found


def locate(raw: dict[str, Any], table: str) -> tuple[dict[str, Any], str]:
    """The mapping of ``table`` inside ``raw`` (made if absent) and its field path."""
    node, path = raw, ""
    for part in table.split(".") if table else ():
        child = node.setdefault(part, {})
        path = f"{path}.{part}" if path else part
        if isinstance(child, list):
            child, path = child[0], f"{path}[0]"
        node = child
    return node, path


def loader_keys(table: str) -> set[str] | None:
    """The keys the loader accepts in ``table`` ("" is the top level); None: no such table."""
    raw = copy.deepcopy(PROBE)
    node, path = locate(raw, table)
    node[PROBE_KEY] = 0
    for rule in violations(raw).get(f"{path}.{PROBE_KEY}" if path else PROBE_KEY, []):
        listed = re.search(r"allowed here: (.+)$", rule)
        if listed:
            return set(listed.group(1).split(", "))
    return None


def model_value(config: MeridianConfig, table: str, key: str, index: int) -> Any:
    """Where the loaded ``config`` keeps ``table.key``; ``index`` picks the region.

    Most keys are attributes of the same name; the few that are not are spelt
    out here. A new key the model keeps elsewhere fails the check with an
    AttributeError until it is added.
    """
    region = config.regions[index]
    link = config.wan.links[0]  # the probe's one link, set without jitter_ms or one_way
    if (table, key) == ("wan", "jitter_ms"):
        return link.jitter_ms
    if (table, key) == ("wan.link", "one_way"):
        return config.latency(link.dst, link.src) != link.latency_ms
    if table == "wan.link":
        return getattr(link, key)
    if table == "region.ports":
        ports = region.global_ if key.startswith("global_") else region.regional
        return getattr(ports, key.removeprefix("global_"))
    if (table, key) == ("resilience", "service"):
        return dict(config.resilience.services)
    if table.startswith("resilience."):
        return getattr(getattr(config.resilience.default, table.removeprefix("resilience.")), key)
    if table == "region":
        return getattr(region, key)
    if table == "keyspace":
        return getattr(config.keyspaces[0], key)
    return getattr(getattr(config, table), key)


def as_toml(value: Any) -> Any:
    """A model value as the TOML value that sets it."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return (
            value.relative_to(BASE_DIR).as_posix() if value.is_relative_to(BASE_DIR) else str(value)
        )
    if isinstance(value, tuple | list):
        return [as_toml(v) for v in value]
    return value


def same(documented: Any, actual: Any) -> bool:
    """Equal as TOML values: 90 and 90.0 are the same number, 1 and true are not."""
    if isinstance(documented, list) and isinstance(actual, list):
        return len(documented) == len(actual) and all(map(same, documented, actual))
    numbers = (int, float)
    if (
        isinstance(documented, numbers)
        and isinstance(actual, numbers)
        and not isinstance(documented, bool)
        and not isinstance(actual, bool)
    ):
        return documented == actual
    return type(documented) is type(actual) and documented == actual


@dataclass
class Probes:
    """The configurations defaults are read from, loaded once per check."""

    stock: MeridianConfig
    shifted: MeridianConfig

    @classmethod
    def load(cls) -> Probes:
        shifted = copy.deepcopy(PROBE)
        for name, value in SHIFTED.items():
            table, _, key = name.rpartition(".")
            locate(shifted, table)[0][key] = value
        return cls(load(PROBE), load(shifted))


def check_default(probes: Probes, table: str, key: str, cell: str) -> str | None:
    """What is wrong with the documented default of ``table.key``, if anything."""
    name = f"{table}.{key}"
    try:
        default = parse_default(cell)
        if default.kind == "required":
            raw = copy.deepcopy(PROBE)
            node, path = locate(raw, table)
            node.pop(key, None)
            if f"{path}.{key}" not in violations(raw):
                return f"{name}: documented as *required*, but the loader accepts it left out"
            return None
        stock = as_toml(model_value(probes.stock, table, key, 0))
        shifted = as_toml(model_value(probes.shifted, table, key, SHIFTED_REGION))
        moved = ", ".join(f"{k} = {v}" for k, v in SHIFTED.items())
        where = f"with {moved} in region[{SHIFTED_REGION}]"
        if default.kind == "unset":
            if stock is not None:
                return f"{name}: documented as *unset*, but the default is {stock!r}"
        elif default.kind == "derived":
            expected = evaluate(default.value, {**NAMES, "i": SHIFTED_REGION})
            if not same(expected, shifted):
                return (
                    f"{name}: documented default is {expected:g} {where}, "
                    f"but the loader gives {shifted!r}"
                )
        elif not same(default.value, stock):
            return f"{name}: documented default is {cell}, but the loader gives {stock!r}"
        elif name not in SHIFTED and not same(default.value, shifted):
            return f"{name}: documented default is {cell}, but the loader gives {shifted!r} {where}"
    except (ValueError, AttributeError) as exc:
        return f"{name}: {exc}"
    return None


def check_reference(text: str) -> list[str]:
    """Every way ``text`` disagrees with the loader; empty when it is complete and right."""
    ref = parse_reference(text)
    problems = list(ref.problems)
    probes = Probes.load()
    top = loader_keys("")
    assert top, "the loader no longer names the tables it allows; update loader_keys()"
    problems += [f"[{name}] is not documented" for name in sorted(top - ref.tables.keys())]
    for table, rows in ref.tables.items():
        allowed = loader_keys(table)
        if allowed is None:
            problems.append(f"[{table}] is documented, but the loader has no such table")
            continue
        children = {
            t.removeprefix(f"{table}.")
            for t in ref.tables
            if t.startswith(f"{table}.") and "." not in t.removeprefix(f"{table}.")
        }
        for key in sorted(allowed - rows.keys() - children):
            problems.append(f"{table}.{key}: accepted by the loader, but not documented")
        for key in sorted(rows.keys() - allowed):
            problems.append(f"{table}.{key}: documented, but the loader rejects it")
        for key in sorted(rows.keys() & allowed):
            problem = check_default(probes, table, key, rows[key])
            if problem:
                problems.append(problem)
    return problems


# -- the tests -------------------------------------------------------------------------


def test_the_reference_documents_every_table_key_and_default() -> None:
    problems = check_reference(DOC.read_text(encoding="utf-8"))
    assert not problems, "docs/configuration.md is out of step:\n" + "\n".join(problems)


def test_the_reference_covers_tables_nested_in_other_tables() -> None:
    # The check is only as good as its probes: they must reach the nested tables.
    tables = parse_reference(DOC.read_text(encoding="utf-8")).tables
    for table in ("wan.link", "region.ports", "resilience.retry"):
        assert table in tables
        assert loader_keys(table) == tables[table].keys()


def test_every_level_of_resilience_names_all_it_allows() -> None:
    # The probe reads "allowed here: ..." back, so each level must list all it takes.
    sections = {f.name for f in dataclasses.fields(ResiliencePolicy)}
    assert loader_keys("resilience") == sections | {"service"}
    assert loader_keys("resilience.service.orders") == sections | {"route"}
    route = violations({"resilience": {"service": {"orders": {"route": {"/a": {PROBE_KEY: 0}}}}}})
    assert route == {
        f'resilience.service.orders.route."/a".{PROBE_KEY}': [
            "unknown section; allowed here: fallback, retry, timeout"
        ]
    }


def mutate(old: str, new: str) -> str:
    """The reference with the one occurrence of ``old`` replaced by ``new``."""
    text = DOC.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"the reference changed; pick another line than {old!r}"
    return text.replace(old, new)


def test_the_checker_reports_a_wrong_default_and_a_missing_key_together() -> None:
    text = mutate("| `peer_timeout_s` | `1.5` |", "| `peer_timeout_s` | `2.5` |")
    row = next(line for line in text.splitlines() if line.startswith("| `unhealthy_after` |"))
    text = text.replace(row + "\n", "")
    problems = check_reference(text)
    assert len(problems) == 2, problems
    assert any(p.startswith("agent.peer_timeout_s: documented default is `2.5`") for p in problems)
    assert "1.5" in next(p for p in problems if p.startswith("agent.peer_timeout_s"))
    assert "gateway.unhealthy_after: accepted by the loader, but not documented" in problems


@pytest.mark.parametrize(
    ("old", "new", "reported"),
    [
        pytest.param(
            "| `max_attempts` | `3` |",
            "| `max_attempts` | `3` | | |\n| `max_tries` | `3` |",
            "resilience.retry.max_tries: documented, but the loader rejects it",
            id="a key the loader does not have",
        ),
        pytest.param(
            "| `grpc_port` | `base_port + 100 * i + 20` |",
            "| `grpc_port` | `base_port + 20` |",
            "region.grpc_port: documented default is 20020",
            id="a derived default that ignores the region",
        ),
        pytest.param(
            "| `jitter_ms` | `wan.jitter_ms` |",
            "| `jitter_ms` | `1.0` |",
            "wan.link.jitter_ms: documented default is `1.0`, but the loader gives 7.5 with",
            id="a fixed default where the loader derives one",
        ),
        pytest.param(
            '| `locality` | `"global"` |',
            "| `locality` | *required* |",
            "keyspace.locality: documented as *required*, but the loader accepts it left out",
            id="a default documented as required",
        ),
        pytest.param(
            '| `storage` | `"global"` |',
            '| `storage` | `"regional"` |',
            "idempotency.storage: documented default is `\"regional\"`, but the loader gives 'global'",
            id="a wrong string",
        ),
        pytest.param(
            "| `enabled` | `false` |",
            "| `enabled` | `0` |",
            "resilience.fallback.enabled: documented default is `0`, but the loader gives False",
            id="a number where the loader has a boolean",
        ),
        pytest.param(
            "| `monitor_url` | *unset* |",
            "| `monitor_url` | unset |",
            "region.monitor_url: write the default as",
            id="a default written without backticks",
        ),
        pytest.param(
            "## `[telemetry]`",
            "## `[telemetri]`",
            "[telemetry] is not documented",
            id="a table that is not documented",
        ),
        pytest.param(
            "## `[telemetry]`",
            "## `[telemetri]`",
            "[telemetri] is documented, but the loader has no such table",
            id="a table the loader does not have",
        ),
        pytest.param(
            "### `[resilience.bulkhead]`",
            "### Bulkhead",
            "resilience.bulkhead: accepted by the loader, but not documented",
            id="a resilience section that is not documented",
        ),
    ],
)
def test_the_checker_reports_each_kind_of_drift(old: str, new: str, reported: str) -> None:
    problems = check_reference(mutate(old, new))
    assert any(p.startswith(reported) for p in problems), problems


def test_derived_defaults_understand_only_arithmetic_on_known_names() -> None:
    names = {**NAMES, "i": 1}
    assert evaluate("base_port + 100 * i + 21", names) == 20121
    assert evaluate("wan.jitter_ms", names) == 7.5
    for bad in ("base_port / 2", "region_port + 1", "__import__('os')", "base_port +"):
        with pytest.raises(ValueError, match=r"derived default|neither"):
            evaluate(bad, names)
