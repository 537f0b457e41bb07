"""Optional py-spy sampling of the agent while a load runs (``--py-spy``).

py-spy is not a project dependency: it is run with ``uv tool run py-spy`` (or a
``py-spy`` already on PATH). Samples are taken ``--nonblocking`` so the agent is
never paused; the raw collapsed stacks are kept next to the results and
summarised as the functions where the agent spends its own time, and the share
of busy samples in which each library appears anywhere on the stack.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

#: Libraries worth naming when they appear on the agent's stacks. grpc's Cython core
#: does not show up as frames: its time is the *own* time of ``Handle._run`` (callbacks
#: run by the event loop) and ``Thread.run`` (grpc's completion-queue poller thread).
LIBRARIES = {
    "meridian": "/meridian/",
    "opentelemetry": "/opentelemetry/",
    "prometheus_client": "/prometheus_client/",
    "logging": "/logging/",
    "protobuf": "/google/protobuf/",
    "nats": "/nats/",
    "aiohttp": "/aiohttp/",
}
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")


@dataclass
class ProfileSummary:
    label: str
    raw_path: str
    samples: int
    top_self: list[tuple[str, float]]
    top_inclusive: list[tuple[str, float]]
    libraries: dict[str, float]


def _command() -> list[str]:
    found = shutil.which("py-spy")
    return [found] if found else ["uv", "tool", "run", "py-spy"]


class Profiler:
    def __init__(self, out_dir: Path | None) -> None:
        self.out_dir = out_dir
        self.summaries: list[ProfileSummary] = []
        self.problem = ""

    @property
    def enabled(self) -> bool:
        return self.out_dir is not None and not self.problem

    async def check(self) -> None:
        """Fetch py-spy now (uv may download it) so it does not happen mid-measurement."""
        if self.out_dir is None:
            return
        proc = await asyncio.create_subprocess_exec(
            *_command(),
            "--version",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            self.problem = f"py-spy is not available: {out.decode(errors='replace')[-300:]}"

    @asynccontextmanager
    async def record(self, pid: int, label: str, duration_s: float) -> AsyncIterator[None]:
        """Sample ``pid`` for ``duration_s`` while the body runs."""
        if not self.enabled:
            yield
            return
        assert self.out_dir is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        raw = self.out_dir / f"{label}.txt"
        proc = await asyncio.create_subprocess_exec(
            *_command(),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(duration_s))),
            "--rate",
            "100",
            "--nonblocking",
            "--nolineno",
            "--full-filenames",
            "--format",
            "raw",
            "--output",
            str(raw),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            yield
        finally:
            try:
                _, err = await asyncio.wait_for(proc.communicate(), timeout=duration_s + 30)
            except TimeoutError:
                proc.kill()
                err = b"timed out"
            if raw.exists():
                self.summaries.append(summarize(label, raw))
            else:
                self.problem = f"py-spy wrote nothing: {err.decode(errors='replace')[-300:]}"


def summarize(label: str, raw: Path, top: int = 12) -> ProfileSummary:
    """From py-spy's raw format: own time per function, time inside each Meridian or
    library function (inclusive), and the share of samples each library is on."""
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libs: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaves[_name(frames[-1])] += count
        named = {
            _name(f)
            for f in frames
            if any(m in f for m in LIBRARIES.values()) and "/meridian/cli/" not in f
        }
        for name in named:
            inclusive[name] += count
        for lib, marker in LIBRARIES.items():
            if any(marker in f for f in frames):
                libs[lib] += count

    def share(n: int) -> float:
        return round(n / total, 3) if total else 0.0

    return ProfileSummary(
        label,
        str(raw),
        total,
        [(name, share(n)) for name, n in leaves.most_common(top)],
        [(name, share(n)) for name, n in inclusive.most_common(top)],
        {lib: share(n) for lib, n in libs.most_common()},
    )


def _name(frame: str) -> str:
    m = _FRAME.match(frame)
    return f"{m['func']} ({_short(m['file'])})" if m else frame


def _short(path: str) -> str:
    for marker in ("site-packages/", "/src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return re.sub(r"^.*/lib/python3\.\d+/", "", path)
