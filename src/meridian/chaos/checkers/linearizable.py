"""Linearizability of a CAS register per key, decided by Porcupine.

The decision is made by the Go command in ``tools/porcupine`` (a thin wrapper
around ``github.com/anishathalye/porcupine``); this module builds it on first
use into ``.meridian/bin/`` (gitignored), writes the register operations of a
history to a file, runs the command and reads its verdict. ``read``,
``write`` and ``cas`` ops take part (see the command's doc for their values);
``info`` ops are indeterminate and ``fail`` ops did not happen, except a
``cas`` refused with CONFLICT: CONFLICT promises that a committed write beat
the caller, so it goes to the command as a ``refused`` op, which is only
linearizable if the register held something other than the expected value at
some instant during the call (Porcupine's convention of dropping failed
operations would hide a false CONFLICT).

``MERIDIAN_PORCUPINE`` names a prebuilt binary instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
from pathlib import Path

from meridian.chaos.checkers.verdict import Verdict
from meridian.chaos.history import Event, History

REPO = Path(__file__).resolve().parents[4]
TOOL_DIR = REPO / "tools" / "porcupine"
REGISTER_FS = frozenset({"read", "write", "cas"})
#: How a completion's error text starts when the agent answered CONFLICT.
CONFLICT_PREFIX = "ConflictError"


class PorcupineUnavailableError(RuntimeError):
    """The Porcupine command could not be built or run; the message says why."""


def porcupine_binary(*, build_dir: Path | None = None) -> Path:
    """The Porcupine command, built with ``go build`` if missing or older than its source."""
    override = os.environ.get("MERIDIAN_PORCUPINE")
    if override:
        return Path(override)
    out = (build_dir or REPO / ".meridian" / "bin") / "porcupine"
    sources = [*TOOL_DIR.glob("*.go"), TOOL_DIR / "go.mod", TOOL_DIR / "go.sum"]
    newest = max((p.stat().st_mtime for p in sources if p.exists()), default=0.0)
    if out.exists() and out.stat().st_mtime >= newest:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            ["go", "build", "-o", str(out), "."],
            cwd=TOOL_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PorcupineUnavailableError(f"cannot run `go build` in {TOOL_DIR}: {exc}") from exc
    if proc.returncode != 0:
        raise PorcupineUnavailableError(
            f"`go build` in {TOOL_DIR} failed ({proc.returncode}):\n{proc.stderr}"
        )
    return out


class LinearizableChecker:
    """Every key's read/write/cas ops are linearizable as a CAS register.

    ``workdir`` receives the filtered history, the verdict and Porcupine's
    visualization (``linearizability.html``); a temporary directory otherwise.
    """

    name = "linearizable"

    def __init__(
        self, workdir: Path | None = None, *, timeout_s: float = 60.0, prefix: str = ""
    ) -> None:
        self.workdir = workdir
        self.timeout_s = timeout_s
        self.prefix = prefix

    def check(self, history: History) -> Verdict:
        events = refused_as_observations(
            [
                e
                for e in history.events
                if e.f in REGISTER_FS and (e.key or "").startswith(self.prefix)
            ]
        )
        if not any(e.type == "ok" for e in events):
            return Verdict(self.name, None, "no completed register operation to check")
        if self.workdir is None:
            with tempfile.TemporaryDirectory(prefix="porcupine-") as tmp:
                return self._run(events, Path(tmp), keep_html=False)
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self._run(events, self.workdir, keep_html=True)

    def _run(self, events: list[Event], workdir: Path, *, keep_html: bool) -> Verdict:
        try:
            binary = porcupine_binary()
        except PorcupineUnavailableError as exc:
            return Verdict(self.name, None, str(exc))
        hist = workdir / "register-history.json"
        hist.write_text(json.dumps({"events": [e.to_json() for e in events]}))
        out = workdir / "porcupine-verdict.json"
        html = workdir / "linearizability.html"
        argv = [str(binary), "-history", str(hist), "-out", str(out)]
        argv += ["-timeout", f"{self.timeout_s:g}s"]
        if keep_html:
            argv += ["-html", str(html)]
        proc = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=self.timeout_s * 20 + 60
        )
        if proc.returncode != 0:
            return Verdict(self.name, None, f"porcupine failed: {proc.stderr.strip()}")
        raw = json.loads(out.read_text())
        result = raw["result"]
        valid = {"Ok": True, "Illegal": False}.get(result)
        bad = sorted(k for k, r in raw["keys"].items() if r == "Illegal")
        unknown = sorted(k for k, r in raw["keys"].items() if r == "Unknown")
        summary = (
            f"{result}: {raw['operations']} ops ({raw['indeterminate']} indeterminate) "
            f"on {len(raw['keys'])} key(s)"
        )
        if bad:
            summary += f"; not linearizable: {', '.join(bad)}"
        if unknown:
            summary += f"; undecided in {self.timeout_s:g}s: {', '.join(unknown)}"
        details = {"porcupine": raw}
        if keep_html:
            details["visualization"] = html.name
        return Verdict(
            self.name,
            valid,
            summary,
            errors=[{"key": k, "result": "Illegal"} for k in bad],
            details=details,
        )


def refused_as_observations(events: list[Event]) -> list[Event]:
    """Each ``cas`` that failed with CONFLICT as an ok ``refused`` op (invoke and
    completion both), in place; every other event unchanged."""
    out = list(events)
    open_at: dict[int, int] = {}  # process -> index in out of its open invoke
    for i, e in enumerate(out):
        if e.type == "invoke":
            open_at[e.process] = i
            continue
        j = open_at.pop(e.process, None)
        conflict = (e.error or "").startswith(CONFLICT_PREFIX)
        if j is not None and e.f == "cas" and e.type == "fail" and conflict:
            out[j] = dataclasses.replace(out[j], f="refused")
            out[i] = dataclasses.replace(e, type="ok", f="refused", value=out[j].value)
    return out
