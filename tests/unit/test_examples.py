"""The example configuration files in examples/ stay valid.

``sandbox.toml`` promises every setting with its default: it must load to
exactly the configuration of no file at all, with its commented-out (derived)
settings too, and show every key docs/configuration.md lists. A setting that
is unset by default is shown commented out with ``# unset: ...`` after it.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from meridian.config import MeridianConfig, default_config_text, load_config, parse_config
from meridian.core.errors import ConfigError
from tests.unit.test_config_reference import DOC, parse_reference

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SANDBOX = EXAMPLES / "sandbox.toml"
# Both files are read as if from here, so that relative paths compare equal.
BASE_DIR = Path("/example")
# `# key = value` or `# [table]`: a setting shown commented out, not prose.
COMMENTED = re.compile(r"^# (?=\[\[?[a-z_.]+\]\]?|[a-z0-9_]+ = )")
UNSET = re.compile(r"#\s*unset\b")


def load(text: str) -> MeridianConfig:
    return parse_config(tomllib.loads(text), env={}, base_dir=BASE_DIR)


def differences(actual: Any, expected: Any, path: str) -> list[str]:
    """Where ``actual`` differs from ``expected``, down to the field."""
    if dataclasses.is_dataclass(actual) and type(actual) is type(expected):
        return [
            d
            for f in dataclasses.fields(actual)
            for d in differences(
                getattr(actual, f.name), getattr(expected, f.name), f"{path}.{f.name}"
            )
        ]
    if isinstance(actual, tuple) and isinstance(expected, tuple) and len(actual) == len(expected):
        return [
            d
            for i, pair in enumerate(zip(actual, expected, strict=True))
            for d in differences(*pair, f"{path}[{i}]")
        ]
    return [] if actual == expected else [f"{path} is {actual!r}, not {expected!r}"]


def uncommented(text: str, *, unset: bool) -> str:
    """``text`` with its commented-out settings written out (the unset ones if ``unset``)."""
    lines = []
    for line in text.splitlines():
        if COMMENTED.match(line) and (unset or not UNSET.search(line)):
            line = line[2:]
        lines.append(line)
    return "\n".join(lines) + "\n"


def shown(raw: dict[str, Any], text: str, table: str, key: str) -> bool:
    """Whether ``table.key`` is in ``raw`` (the first of an array of tables is enough)."""
    node: Any = raw
    for part in table.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
        node = node[0] if isinstance(node, list) and node else node
    # A table of named tables ([resilience.service.NAME]) is shown by its header.
    return (isinstance(node, dict) and key in node) or f"[{table}.{key}." in text


def compared(label: str, text: str) -> list[str]:
    """How ``text`` loads differently from no file at all, each prefixed by ``label``."""
    try:
        config = load(text)
    except ConfigError as exc:
        return [f"{label}, the file does not load: {exc}"]
    return [f"{label}, {d}" for d in differences(config, load(default_config_text()), "config")]


def problems(text: str) -> list[str]:
    """Every way the example ``text`` is not "every setting with its default"."""
    found = compared("as written", text)
    found += compared("with the commented-out settings", uncommented(text, unset=False))
    reference = parse_reference(DOC.read_text(encoding="utf-8")).tables
    everything = tomllib.loads(uncommented(text, unset=True))
    for table, rows in reference.items():
        found += [
            f"{table}.{key} is not shown" for key in rows if not shown(everything, text, table, key)
        ]
    documented_unset = {
        key for rows in reference.values() for key, cell in rows.items() if cell == "*unset*"
    }
    marked_unset: set[str] = set()
    absent_table = False
    for line in text.splitlines():
        if not line.startswith("# "):
            absent_table = False
        if COMMENTED.match(line) and UNSET.search(line):
            if line.startswith("# [["):
                # An array of tables that is absent by default: its keys go with it.
                absent_table = True
            elif not absent_table:
                marked_unset.add(line[2:].split(" = ")[0])
    found += [
        f"{key} is unset by default; mark it '# unset: ...'"
        for key in sorted(documented_unset - marked_unset)
    ]
    found += [
        f"{key} is marked unset, but has a default"
        for key in sorted(marked_unset - documented_unset)
    ]
    return found


@pytest.mark.parametrize("name", ["sandbox.toml", "supercluster.toml"])
def test_example_config_loads(name: str) -> None:
    config = load_config(EXAMPLES / name, env={})
    assert config.region_names == ("us-east", "eu-west", "ap-south")


def test_sandbox_example_shows_every_setting_with_the_built_in_default() -> None:
    assert problems(SANDBOX.read_text(encoding="utf-8")) == []


def test_sandbox_example_loads_like_no_file_at_all() -> None:
    example = load_config(SANDBOX, env={})
    default = load_config(None, env={})
    # The workdir is taken from the file's directory, and the source names the file.
    assert example.sandbox.workdir == SANDBOX.parent / ".meridian" / "sandbox"
    example = dataclasses.replace(
        example,
        sandbox=dataclasses.replace(example.sandbox, workdir=default.sandbox.workdir),
        source=default.source,
    )
    assert example == default


def mutate(old: str, new: str) -> str:
    text = SANDBOX.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"the example changed; pick another line than {old!r}"
    return text.replace(old, new)


@pytest.mark.parametrize(
    ("old", "new", "reported"),
    [
        pytest.param(
            "unhealthy_after = 2 ",
            "unhealthy_after = 3 ",
            "as written, config.gateway.unhealthy_after is 3, not 2",
            id="a wrong value",
        ),
        pytest.param(
            "half_open_probes = 1",
            "half_open_probes = 2",
            "as written, config.resilience.default.breaker.half_open_probes is 2, not 1",
            id="a wrong resilience value",
        ),
        pytest.param(
            "# proxy_base_port = 14900",
            "# proxy_base_port = 14800",
            "with the commented-out settings, config.wan.proxy_base_port is 14800, not 14900",
            id="a wrong derived value",
        ),
        pytest.param(
            "# global_monitor = 14013",
            "# global_monitor = 14050",
            "with the commented-out settings, config.regions[0].global_.monitor is 14050",
            id="a wrong derived port",
        ),
        pytest.param(
            "max_body_bytes = 983040",
            "",
            "invocation.max_body_bytes is not shown",
            id="a setting left out",
        ),
        pytest.param(
            "# per_try_timeout_s = 1.0   # unset:",
            "# per_try_timeout_s = 1.0   # none:",
            "per_try_timeout_s is unset by default; mark it '# unset: ...'",
            id="an unset setting shown as a default",
        ),
    ],
)
def test_the_sandbox_example_check_catches(old: str, new: str, reported: str) -> None:
    found = problems(mutate(old, new))
    assert any(p.startswith(reported) for p in found), found


def test_supercluster_example_points_agents_at_their_own_region() -> None:
    config = load_config(EXAMPLES / "supercluster.toml", env={})
    for region in config.regions:
        assert all(region.name in url for url in region.agent_nats_urls)
