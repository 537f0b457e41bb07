"""Variants of the Go ``orders`` example, with their version and failure share fixed
at build time: bad arguments are refused before any build, and a real build (Go is
required, as in CI) bakes the version in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from meridian.demo import binaries


@pytest.mark.parametrize(
    ("version", "fail_percent", "argument"),
    [
        ("", 0, "version"),
        ("v" * 65, 0, "version"),
        ("v2 beta", 0, "version"),
        ("v2/../x", 0, "version"),
        ("v2;rm", 0, "version"),
        ("v2", -1, "fail_percent"),
        ("v2", 101, "fail_percent"),
        ("v2", True, "fail_percent"),
        ("v2", 30.0, "fail_percent"),
        ("v2", "30", "fail_percent"),
    ],
)
def test_bad_arguments_are_refused_before_building(
    tmp_path: Path, version: str, fail_percent: int, argument: str
) -> None:
    with pytest.raises(ValueError, match=f"^{argument}: "):
        binaries.orders_variant_binary(version, fail_percent, bin_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_variant_command_is_the_documented_build() -> None:
    step = binaries.orders_variant_command("v2.1+b_7-rc", 30)
    assert step.argv == (
        "go",
        "build",
        "-o",
        str(binaries.BIN_DIR / "orders-v2.1+b_7-rc-f30"),
        "-ldflags",
        "-X main.version=v2.1+b_7-rc -X main.failPercent=30",
        "./examples/orders",
    )
    assert step.cwd == binaries.REPO / "sdk" / "go"
    assert binaries.orders_variant_path("v" * 64, 100).name == "orders-" + "v" * 64 + "-f100"


def test_a_built_variant_carries_its_version_and_failure_share(tmp_path: Path) -> None:
    path = binaries.orders_variant_binary("v2-test", 30, bin_dir=tmp_path, only_stale=False)
    assert path == tmp_path / "orders-v2-test-f30"
    # -help prints the build and the defaults; ORDERS_VERSION is left out so that the
    # default of -version is the build's.
    env = {"PATH": binaries.tool_env()["PATH"], "HOME": str(tmp_path)}
    proc = subprocess.run(
        [str(path), "-help"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("orders, build v2-test, failing 30% of new orders on purpose")
    assert 'main.version) (default "v2-test")' in proc.stderr  # -version's default
    # Built again only when its sources are newer.
    built_at = path.stat().st_mtime_ns
    assert binaries.orders_variant_binary("v2-test", 30, bin_dir=tmp_path) == path
    assert path.stat().st_mtime_ns == built_at
