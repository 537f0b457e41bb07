"""The example configuration files in examples/ stay valid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from meridian.config import default_config_text, load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["sandbox.toml", "supercluster.toml"])
def test_example_config_loads(name: str) -> None:
    config = load_config(EXAMPLES / name, env={})
    assert config.region_names == ("us-east", "eu-west", "ap-south")


def test_sandbox_example_matches_the_built_in_defaults(tmp_path: Path) -> None:
    example = load_config(EXAMPLES / "sandbox.toml", env={})
    built_in = tmp_path / "default.toml"
    built_in.write_text(default_config_text())
    default = load_config(built_in, env={})
    # Everything but where the file is (workdir and source follow it).
    for field in dataclasses.fields(example):
        if field.name in ("sandbox", "source"):
            continue
        assert getattr(example, field.name) == getattr(default, field.name), field.name
    workdir = dataclasses.replace(example.sandbox, workdir=default.sandbox.workdir)
    assert workdir == default.sandbox


def test_supercluster_example_points_agents_at_their_own_region() -> None:
    config = load_config(EXAMPLES / "supercluster.toml", env={})
    for region in config.regions:
        assert all(region.name in url for url in region.agent_nats_urls)
