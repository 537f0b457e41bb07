"""ProcessRecord.alive: a recorded pid counts as ours only while it runs our command."""

from __future__ import annotations

import subprocess
import sys
import time

from meridian.sandbox.processes import ProcessRecord, _state


def record(proc: subprocess.Popen[bytes], argv: list[str]) -> ProcessRecord:
    return ProcessRecord("t", "", proc.pid, tuple(argv), (), "")


def test_a_running_child_with_our_command_is_alive() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    proc = subprocess.Popen(argv)
    try:
        assert record(proc, argv).alive()
        # The same pid running something else (a recycled pid) is not ours.
        assert not record(proc, [*argv, "other"]).alive()
    finally:
        proc.kill()
        proc.wait()


def test_a_zombie_is_not_alive() -> None:
    argv = [sys.executable, "-c", "pass"]
    proc = subprocess.Popen(argv)
    for _ in range(500):  # until it has exited but is not yet reaped
        if _state(proc.pid) == "Z":
            break
        time.sleep(0.01)
    assert _state(proc.pid) == "Z"
    assert not record(proc, argv).alive()
    proc.wait()
    assert not record(proc, argv).alive()  # reaped: gone
