"""The public API of the Python client and the Rust SDK, pinned in testdata/public_api/.

A change to a public name or signature fails here, so an accidental break
shows up in review; an intended one updates the pins:

    uv run --frozen python -m tests.unit.test_public_api --update

The Go SDK's pin is checked by ``TestPublicAPI`` in sdk/go/meridian (``go test
-run TestPublicAPI -update`` rewrites it).
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PINS = REPO / "testdata" / "public_api"
RUST_SRC = REPO / "sdk" / "rust" / "src"

#: A public item of the Rust SDK, one per line as rustfmt writes them. Written
#: by hand: the tool made for this (cargo public-api) needs a nightly toolchain
#: and rustdoc JSON, which this project's machines do not have.
RUST_ITEM = re.compile(
    r"^\s*pub (?:async )?(?:unsafe )?(fn|struct|enum|trait|type|const|static|mod|use)\b[^{;]*"
)
#: A public field of a Rust struct.
RUST_FIELD = re.compile(r"^\s*pub [a-z_][a-z0-9_]*: [^,]*")


def python_api() -> list[str]:
    """``meridian.client.__all__``: each name, its kind and signature, and for a
    class each public method's or property's signature."""
    import meridian.client as client

    out: list[str] = []
    for name in sorted(client.__all__):
        obj = getattr(client, name)
        if inspect.isclass(obj):
            out.append(f"class {name}")
            for attr, value in sorted(vars(obj).items()):
                if attr.startswith("_") and attr not in ("__init__", "__aenter__", "__aexit__"):
                    continue
                if isinstance(value, property):
                    out.append(f"  property {name}.{attr}")
                elif inspect.isfunction(value):
                    out.append(f"  def {name}.{attr}{inspect.signature(value)}")
            fields = getattr(obj, "__dataclass_fields__", {})
            out += [f"  field {name}.{f}" for f in fields]
        elif inspect.isfunction(obj):
            out.append(f"def {name}{inspect.signature(obj)}")
        else:
            out.append(f"{name} = {obj!r}")
    return out


def rust_api() -> list[str]:
    """Every ``pub`` item of sdk/rust/src and its subfolders, file by file, as its
    declaration line."""
    out: list[str] = []
    for path in sorted(RUST_SRC.rglob("*.rs")):
        in_tests = False
        for line in path.read_text().splitlines():
            if re.match(r"^\s*#\[cfg\(test\)\]", line):
                in_tests = True  # the rest of the file is the test module
            if in_tests:
                continue
            m = RUST_ITEM.match(line) or RUST_FIELD.match(line)
            if m:
                out.append(f"{path.relative_to(RUST_SRC)}: {' '.join(m.group(0).split())}")
    return out


def _check(name: str, actual: list[str]) -> None:
    pinned = (PINS / name).read_text().splitlines()
    removed = [x for x in pinned if x not in actual]
    added = [x for x in actual if x not in pinned]
    assert not removed and not added, (
        f"the public API differs from testdata/public_api/{name}:\n"
        + "".join(f"- {x}\n" for x in removed)
        + "".join(f"+ {x}\n" for x in added)
        + "if intended: uv run --frozen python -m tests.unit.test_public_api --update"
    )


def test_the_python_client_api_is_pinned() -> None:
    _check("python.txt", python_api())


def test_the_rust_sdk_api_is_pinned() -> None:
    _check("rust.txt", rust_api())


def test_the_pins_are_not_empty() -> None:
    # A scanner that found nothing would pin nothing and never fail.
    assert len(python_api()) > 30
    assert len(rust_api()) > 30
    assert any(x.startswith("class MeridianClient") for x in python_api())
    assert any("pub struct Client" in x for x in rust_api())


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python -m tests.unit.test_public_api --update")
    (PINS / "python.txt").write_text("\n".join(python_api()) + "\n")
    (PINS / "rust.txt").write_text("\n".join(rust_api()) + "\n")
    print(f"wrote {PINS / 'python.txt'} and {PINS / 'rust.txt'}")
