"""The example services' binaries: where they are and how they are built.

``./scripts/demo`` builds both before it runs the demo, with the same
commands as :func:`build_commands`:

- ``orders`` (Go): ``go build -o .meridian/bin/orders ./examples/orders`` in ``sdk/go``;
- ``inventory`` (Rust): ``cargo build --locked --example inventory`` in ``sdk/rust``,
  with ``CARGO_TARGET_DIR`` defaulting to ``~/.cache/meridian/cargo-target`` as in
  ``scripts/test-sdks`` (compiled dependencies are kept between runs).

``MERIDIAN_ORDERS_BIN`` and ``MERIDIAN_INVENTORY_BIN`` name other binaries.

Variants of ``orders`` (:func:`orders_variant_binary`) are built on demand, with the
version they register and the share of orders they fail on purpose fixed at build
time: ``go build -o .meridian/bin/orders-v2-f30 -ldflags "-X main.version=v2
-X main.failPercent=30" ./examples/orders`` (see ``sdk/go/examples/orders/README.md``).
A rollout of a variant that fails orders must be rolled back by its analysis.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meridian.core.errors import MeridianError

REPO = Path(__file__).resolve().parents[3]
#: Where ``./scripts/demo`` puts the binaries it builds.
BIN_DIR = REPO / ".meridian" / "bin"
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
    return Path(env.get("MERIDIAN_ORDERS_BIN") or BIN_DIR / "orders")


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


#: What an ``orders`` variant's version may be: it is part of the binary's name and
#: of the ``-ldflags`` argument, and is registered as is.
_VARIANT_VERSION = re.compile(r"[A-Za-z0-9._+-]{1,64}")


def orders_variant_path(version: str, fail_percent: int, *, bin_dir: Path = BIN_DIR) -> Path:
    """Where the ``orders`` variant registering ``version`` and failing ``fail_percent``
    % of new orders is built: ``bin_dir/orders-<version>-f<fail_percent>``.

    Raises ValueError naming the argument when ``version`` is not 1 to 64 of
    ``A-Z a-z 0-9 . _ + -``, or ``fail_percent`` is not a whole number from 0 to 100."""
    if not isinstance(version, str) or not _VARIANT_VERSION.fullmatch(version):
        raise ValueError(
            f"version: must be 1 to 64 of A-Z, a-z, 0-9, '.', '_', '+' and '-'; got {version!r}"
        )
    whole = isinstance(fail_percent, int) and not isinstance(fail_percent, bool)
    if not whole or not 0 <= fail_percent <= 100:
        raise ValueError(
            f"fail_percent: must be a whole number from 0 to 100; got {fail_percent!r}"
        )
    return bin_dir / f"orders-{version}-f{fail_percent}"


def orders_variant_command(
    version: str,
    fail_percent: int,
    env: Mapping[str, str] | None = None,
    *,
    bin_dir: Path = BIN_DIR,
) -> BuildStep:
    """The build of :func:`orders_variant_path`'s binary: the ``orders`` example with
    ``version`` as the version it registers (the default of its ``-version`` flag) and
    ``fail_percent`` % of new orders failed with a 500 before any side effect. Raises
    ValueError as :func:`orders_variant_path` does."""
    target = orders_variant_path(version, fail_percent, bin_dir=bin_dir)
    ldflags = f"-X main.version={version} -X main.failPercent={fail_percent}"
    return BuildStep(
        f"orders {version} (Go, failing {fail_percent}%)",
        ("go", "build", "-o", str(target), "-ldflags", ldflags, "./examples/orders"),
        REPO / "sdk" / "go",
        tool_env(env),
    )


def orders_variant_binary(
    version: str,
    fail_percent: int,
    env: Mapping[str, str] | None = None,
    *,
    only_stale: bool = True,
    bin_dir: Path = BIN_DIR,
) -> Path:
    """Build the ``orders`` variant of :func:`orders_variant_command` (unless it is
    there and newer than its sources, with ``only_stale``) and return its path.

    Raises ValueError for a bad argument (before building anything), and
    BinaryMissingError with the tool's output when the build fails."""
    step = orders_variant_command(version, fail_percent, env, bin_dir=bin_dir)
    target = orders_variant_path(version, fail_percent, bin_dir=bin_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    _run(step, target, only_stale=only_stale)
    return target


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
    targets = {"orders (Go)": orders_binary(env), "inventory (Rust)": inventory_binary(env)}
    return [
        step.name
        for step in build_commands(env)
        if _run(step, targets[step.name], only_stale=only_stale)
    ]


def _run(step: BuildStep, target: Path, *, only_stale: bool) -> bool:
    """Run ``step``, which builds ``target``, unless ``only_stale`` and ``target`` is
    newer than its sources; returns whether it ran. Raises BinaryMissingError when
    the tool is missing or the build fails."""
    if only_stale and target.is_file() and target.stat().st_mtime >= _newest_source(step):
        return False
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
    return True


def require(path: Path, what: str) -> Path:
    """``path`` if it is an executable file, else BinaryMissingError saying how to build it."""
    if path.is_file() and os.access(path, os.X_OK):
        return path
    raise BinaryMissingError(
        f"the {what} binary {path} is not built; run ./scripts/demo (it builds both services), "
        "or build it: " + "; ".join(f"(cd {s.cwd} && {' '.join(s.argv)})" for s in build_commands())
    )
