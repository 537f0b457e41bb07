"""Loading configuration text in the unit tests of the loader, and checking what its errors say."""

from __future__ import annotations

from pathlib import Path

import pytest

from meridian.config import MeridianConfig, load_config
from meridian.core.errors import ConfigError

REGIONS = ("us-east", "eu-west", "ap-south")

# Three default regions without the default links, so a test about regions sees
# only the violations it provoked.
NO_LINKS = "[wan]\nlink = []\n"


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> MeridianConfig:
    """Load ``text`` as ``tmp_path/meridian.toml`` with ``env`` (empty by default)."""
    path = tmp_path / "meridian.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, env={} if env is None else env)


def config_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    """The ``ConfigError`` that loading ``text`` raises; fails the test if it loads."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, env)
    return info.value


def assert_violation(err: ConfigError, field: str, *hints: str) -> None:
    """The error names ``field`` and says, in its rule, each of ``hints``."""
    rules = [v.rule for v in err.violations if v.field == field]
    assert rules, f"no violation for {field!r} in {err.violations}"
    assert any(all(h in rule for h in hints) for rule in rules), rules
    # What the user reads carries the same field and hints.
    text = str(err)
    assert f"{field}: " in text
    for h in hints:
        assert h in text


def regions_toml(*names: str) -> str:
    """A ``[[region]]`` table for each of ``names``, in order."""
    return "".join(f'[[region]]\nname = "{n}"\n\n' for n in names)
