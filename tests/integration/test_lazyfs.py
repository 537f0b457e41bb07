"""lazyfs mounted for real (FUSE), and a real nats-server losing power on it.

The point of the power-loss fault: with ``sync_interval: always`` every
acknowledged JetStream message survives it; with NATS's default interval the
acknowledged messages that were not yet fsynced are gone. A ``kill -9`` alone
shows no difference (the page cache survives a process's death), which is
why the fault needs this file system.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.errors import NotFoundError

from meridian.backbone.server import find_nats_server
from meridian.chaos.lazyfs import LazyMounts, crash
from meridian.testing.ports import free_port

MESSAGES = 200


@pytest.fixture
def lazy(tmp_path: Path) -> Iterator[tuple[LazyMounts, Path]]:
    mounts = LazyMounts(tmp_path / "logs")
    mountpoint = tmp_path / "store"
    mounts.mount("store", mountpoint)
    try:
        yield mounts, mountpoint
    finally:
        mounts.close()
    assert not os.path.ismount(mountpoint)


def test_files_written_through_the_mount_lose_only_what_was_not_fsynced(
    lazy: tuple[LazyMounts, Path],
) -> None:
    _, mnt = lazy
    with open(mnt / "synced", "wb") as f:
        f.write(b"one")
        f.flush()
        os.fsync(f.fileno())
        f.write(b" two")
    with open(mnt / "never-synced", "wb") as f:
        f.write(b"lost")
    (mnt / "dir").mkdir()
    # Overwritten in place through a write-only descriptor (as NATS rewrites its
    # raft commit index): lazyfs must still read what it replaces.
    fd = os.open(mnt / "synced", os.O_WRONLY)
    os.pwrite(fd, b"ONE", 0)
    os.close(fd)
    assert (
        (mnt / "synced").read_bytes() == b"ONE two"
    )  # the page cache, as before power loss  # the page cache, as before power loss
    crash(mnt)
    assert (mnt / "synced").read_bytes() == b"one"
    assert (mnt / "never-synced").read_bytes() == b""
    assert (mnt / "dir").is_dir()  # metadata is kept, as in LazyFS
    assert (mnt.with_name("store.disk") / "synced").read_bytes() == b"one"


def test_the_control_file_refuses_anything_but_crash(lazy: tuple[LazyMounts, Path]) -> None:
    _, mnt = lazy
    with pytest.raises(OSError), open(mnt / ".lazyfs", "wb", buffering=0) as f:
        f.write(b"reboot")


def _start_server(store: Path, port: int, sync_always: bool, log: Path) -> subprocess.Popen[bytes]:
    conf = store.parent / f"nats-{port}.conf"
    sync = "\n  sync_interval: always" if sync_always else ""
    conf.write_text(
        f'port: {port}\nserver_name: lazy\njetstream {{\n  store_dir: "{store}"{sync}\n}}\n'
    )
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(find_nats_server(None)), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )


async def _published_then_counted(store: Path, sync_always: bool, log: Path) -> int | None:
    """Publish MESSAGES acknowledged messages, lose power, restart: how many are left
    (None: the stream itself is gone)."""
    port = free_port()
    server = _start_server(store, port, sync_always, log)
    try:
        nc = await _connect(port)
        js = nc.jetstream()
        await js.add_stream(name="POWER", subjects=["power.>"])
        acks = await asyncio.gather(*(js.publish("power.x", b"%d" % i) for i in range(MESSAGES)))
        assert len({a.seq for a in acks}) == MESSAGES
        await nc.close()
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    crash(store)
    server = _start_server(store, port, sync_always, log)
    try:
        nc = await _connect(port)
        try:
            info = await nc.jetstream().stream_info("POWER")
        except NotFoundError:
            return None
        finally:
            await nc.close()
        return info.state.messages
    finally:
        server.terminate()
        server.wait()


async def _connect(port: int) -> nats.NATS:
    for _ in range(100):
        try:
            return await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=1)
        except Exception:
            await asyncio.sleep(0.1)
    raise AssertionError(f"nats-server on {port} never accepted a connection")


@pytest.mark.parametrize("sync_always", [True, False], ids=["always", "default"])
def test_acknowledged_messages_survive_power_loss_only_with_sync_always(
    lazy: tuple[LazyMounts, Path], tmp_path: Path, sync_always: bool
) -> None:
    _, mnt = lazy
    left = asyncio.run(_published_then_counted(mnt, sync_always, tmp_path / "nats.log"))
    print(f"sync_interval {'always' if sync_always else 'default'}: {left} of {MESSAGES} left")
    if sync_always:
        assert left == MESSAGES
    else:
        assert left is None or left < MESSAGES
