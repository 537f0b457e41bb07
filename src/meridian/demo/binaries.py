"""The example services' binaries: where they are and how they are built.

``./scripts/demo`` builds both before it runs the demo, with the same
commands as :func:`build_commands`:

- ``orders`` (Go): ``go build -o .meridian/bin/orders ./examples/orders`` in ``sdk/go``;
- ``inventory`` (Rust): ``cargo build --locked --example inventory`` in ``sdk/rust``,
  with ``CARGO_TARGET_DIR`` defaulting to ``~/.cache/meridian/cargo-target`` as in
  ``scripts/test-sdks`` (compiled dependencies are kept between runs).

``MERIDIAN_ORDERS_BIN`` and ``MERIDIAN_INVENTORY_BIN`` name other binaries.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meridian.core.errors import MeridianError

REPO = Path(__file__).resolve().parents[3]
#: Where the Go and Rust toolchains live when the login profile is not loaded.
TOOL_PATHS = (
    "/usr/local/go/bin",
    str(Path.home() / ".cargo" / "bin"),
    str(Path.home() / "go" / "bin"),
)


class BinaryMissingError(MeridianError):
    """An example service's binary is not built, or could not be built; the message says how."""


@dataclass(frozen=True)
class BuildStep:
    name: str
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]


def cargo_target_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    configured = env.get("CARGO_TARGET_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "meridian" / "cargo-target"


def orders_binary(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("MERIDIAN_ORDERS_BIN") or REPO / ".meridian" / "bin" / "orders")


def inventory_binary(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    configured = env.get("MERIDIAN_INVENTORY_BIN")
    if configured:
        return Path(configured)
    return cargo_target_dir(env) / "debug" / "examples" / "inventory"


def tool_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` with the toolchains' usual directories added to PATH."""
    out = dict(os.environ if env is None else env)
    out["PATH"] = os.pathsep.join([out.get("PATH", ""), *TOOL_PATHS])
    return out


def build_commands(env: Mapping[str, str] | None = None) -> list[BuildStep]:
    """The two builds ``./scripts/demo`` runs."""
    base = tool_env(env)
    cargo_env = {**base, "CARGO_TARGET_DIR": str(cargo_target_dir(base))}
    return [
        BuildStep(
            "orders (Go)",
            ("go", "build", "-o", str(orders_binary(base)), "./examples/orders"),
            REPO / "sdk" / "go",
            base,
        ),
        BuildStep(
            "inventory (Rust)",
            ("cargo", "build", "--locked", "--example", "inventory"),
            REPO / "sdk" / "rust",
            cargo_env,
        ),
    ]


def _newest_source(step: BuildStep) -> float:
    """The latest modification time among the files a build reads (the SDK and the proto)."""
    roots = [step.cwd, REPO / "proto"]
    newest = 0.0
    for root in roots:
        for path in root.rglob("*"):
            if "target" in path.relative_to(root).parts or not path.is_file():
                continue
            newest = max(newest, path.stat().st_mtime)
    return newest


def build(*, only_stale: bool = True, env: Mapping[str, str] | None = None) -> list[str]:
    """Build the binaries: only those missing or older than their sources, unless told
    otherwise; returns what was built. Raises BinaryMissingError with the tool's output
    when a build fails."""
    built = []
    targets = {"orders (Go)": orders_binary(env), "inventory (Rust)": inventory_binary(env)}
    for step in build_commands(env):
        target = targets[step.name]
        if only_stale and target.is_file() and target.stat().st_mtime >= _newest_source(step):
            continue
        tool = shutil.which(step.argv[0], path=step.env.get("PATH"))
        if tool is None:
            raise BinaryMissingError(f"cannot build {step.name}: `{step.argv[0]}` is not on PATH")
        proc = subprocess.run(
            [tool, *step.argv[1:]],
            cwd=step.cwd,
            env=dict(step.env),
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if proc.returncode != 0:
            raise BinaryMissingError(
                f"building {step.name} failed ({' '.join(step.argv)} in {step.cwd}):\n"
                f"{(proc.stdout + proc.stderr)[-3000:]}"
            )
        built.append(step.name)
    return built


def require(path: Path, what: str) -> Path:
    """``path`` if it is an executable file, else BinaryMissingError saying how to build it."""
    if path.is_file() and os.access(path, os.X_OK):
        return path
    raise BinaryMissingError(
        f"the {what} binary {path} is not built; run ./scripts/demo (it builds both services), "
        "or build it: " + "; ".join(f"(cd {s.cwd} && {' '.join(s.argv)})" for s in build_commands())
    )
