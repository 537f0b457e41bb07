"""Choosing the nats-server binary: the bundled one by default, an override if >= 2.12."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meridian.backbone.server import MIN_VERSION, find_nats_server, server_version
from meridian.core.errors import ConfigError


def fake_binary(tmp_path: Path, version_line: str) -> Path:
    """An executable that answers --version like some other nats-server would."""
    path = tmp_path / "nats-server"
    path.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_default_is_the_bundled_server_and_new_enough() -> None:
    binary = find_nats_server(None)
    assert binary.name == "nats-server"
    assert server_version(binary) >= MIN_VERSION


def test_an_older_override_is_rejected_with_the_version(tmp_path: Path) -> None:
    old = fake_binary(tmp_path, "nats-server: v2.10.24")
    with pytest.raises(ConfigError) as err:
        find_nats_server(old)
    assert "2.10.24" in err.value.message
    assert "2.12 or newer" in err.value.message


def test_a_new_enough_override_is_used(tmp_path: Path) -> None:
    new = fake_binary(tmp_path, "nats-server: v2.12.1")
    assert find_nats_server(new) == new


def test_something_that_is_not_a_nats_server_is_rejected(tmp_path: Path) -> None:
    other = fake_binary(tmp_path, "hello")
    with pytest.raises(ConfigError) as err:
        find_nats_server(other)
    assert "is not a nats-server" in err.value.message
