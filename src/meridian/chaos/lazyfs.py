"""A FUSE file system that loses every write not yet fsynced on command: the power-loss fault.

::

    python -m meridian.chaos.lazyfs --backing DIR --mount DIR

A ``kill -9`` of a NATS server keeps the kernel's page cache, so whatever it
wrote survives whether it called ``fsync`` or not, and ``sync_interval`` makes
no visible difference. A power loss does not keep it. This file system passes
every operation through to ``--backing``, and remembers, per file, what each
write since that file's last ``fsync`` overwrote (and the file's size before
them). Writing ``crash`` to the control file ``<mount>/.lazyfs`` rolls every
file back to its state at its last ``fsync``, as a power loss would leave it.
The servers using the mount are killed first (see
:class:`meridian.chaos.nemesis.PowerLoss`).

What is modelled, as in LazyFS (the tool Jepsen used on NATS 2.12.1): file
*data* not synced is lost; file creation, renames and removals are kept (no
journal of metadata). A file opened with ``O_SYNC`` or ``O_DSYNC`` is synced on
every write.

Written by hand: LazyFS itself is a C++ project in no package registry this
project installs from; the FUSE binding (``mfusepy``, over ``libfuse3``) is a
library.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

#: The control file, relative to the mount point; write "crash" to it.
CONTROL = ".lazyfs"
_CONTROL_PATH = "/" + CONTROL
_CONTROL_FH = 1 << 40
_SYNC_FLAGS = os.O_SYNC | os.O_DSYNC


@dataclass
class _Unsynced:
    """What rolls a file back to its last fsync: its size then, and the bytes each
    later write or truncation replaced (within that size), in order."""

    size: int
    undo: list[tuple[int, bytes]] = field(default_factory=list)


class LazyState:
    """The bookkeeping of unsynced writes over a backing directory (no FUSE here)."""

    def __init__(self, backing: Path) -> None:
        self.backing = backing
        self.lock = threading.Lock()
        self.files: dict[str, _Unsynced] = {}
        self.sync_fds: set[int] = set()
        self.crashes = 0

    def real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _entry(self, path: str, fd: int | None) -> _Unsynced:
        entry = self.files.get(path)
        if entry is None:
            size = os.fstat(fd).st_size if fd is not None else os.stat(self.real(path)).st_size
            entry = self.files[path] = _Unsynced(size)
        return entry

    def write(self, path: str, data: bytes, offset: int, fd: int) -> int:
        with self.lock:
            if fd not in self.sync_fds:
                entry = self._entry(path, fd)
                if offset < entry.size:
                    end = min(offset + len(data), entry.size)
                    entry.undo.append((offset, os.pread(fd, end - offset, offset)))
            return os.pwrite(fd, data, offset)

    def truncate(self, path: str, length: int, fd: int | None) -> None:
        with self.lock:
            entry = self._entry(path, fd)
            real = self.real(path)
            if length < entry.size:
                with open(real, "rb") as f:
                    f.seek(length)
                    entry.undo.append((length, f.read(entry.size - length)))
            if fd is not None:
                os.ftruncate(fd, length)
            else:
                os.truncate(real, length)

    def fsync(self, path: str, fd: int) -> None:
        with self.lock:
            os.fsync(fd)
            self.files.pop(path, None)

    def created(self, path: str) -> None:
        with self.lock:
            self.files[path] = _Unsynced(0)

    def renamed(self, old: str, new: str) -> None:
        with self.lock:
            self.files.pop(new, None)
            if old in self.files:
                self.files[new] = self.files.pop(old)
            else:  # children of a renamed directory
                prefix = old.rstrip("/") + "/"
                for p in [p for p in self.files if p.startswith(prefix)]:
                    self.files[new.rstrip("/") + "/" + p[len(prefix) :]] = self.files.pop(p)

    def removed(self, path: str) -> None:
        with self.lock:
            self.files.pop(path, None)

    def crash(self) -> int:
        """Roll every file back to its last fsync; returns how many files changed."""
        with self.lock:
            changed = 0
            for path, entry in self.files.items():
                real = self.real(path)
                try:
                    fd = os.open(real, os.O_WRONLY)
                except FileNotFoundError:
                    continue
                try:
                    for offset, old in reversed(entry.undo):
                        os.pwrite(fd, old, offset)
                    os.ftruncate(fd, entry.size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                changed += 1
            self.files.clear()
            self.crashes += 1
            return changed


def _readable(flags: int) -> int:
    """``flags`` opening for reading too: a write must first read what it overwrites."""
    if flags & os.O_ACCMODE == os.O_WRONLY:
        return (flags & ~os.O_ACCMODE) | os.O_RDWR
    return flags


def _operations(state: LazyState) -> Any:
    import mfusepy as fuse

    class LazyFS(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            if path == _CONTROL_PATH:
                now = time.time_ns()
                return {
                    "st_mode": stat.S_IFREG | 0o200,
                    "st_nlink": 1,
                    "st_size": 0,
                    "st_atime": now,
                    "st_mtime": now,
                    "st_ctime": now,
                }
            st = os.lstat(state.real(path))
            out = {
                k: getattr(st, k)
                for k in ("st_gid", "st_mode", "st_nlink", "st_size", "st_uid", "st_blocks")
            }
            out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            return out

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(state.real(path))]

        def access(self, path: str, amode: int) -> int:
            if path != _CONTROL_PATH and not os.access(state.real(path), amode):
                raise fuse.FuseOSError(errno.EACCES)
            return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(state.real(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.chown(state.real(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            if times is None:
                os.utime(state.real(path))
            else:
                os.utime(state.real(path), ns=times)
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            os.mkdir(state.real(path), mode)
            return 0

        def rmdir(self, path: str) -> int:
            os.rmdir(state.real(path))
            return 0

        def unlink(self, path: str) -> int:
            os.unlink(state.real(path))
            state.removed(path)
            return 0

        def rename(self, old: str, new: str) -> int:
            os.rename(state.real(old), state.real(new))
            state.renamed(old, new)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(state.real(path))
            keys = ["f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree"]
            keys += ["f_files", "f_flag", "f_frsize", "f_namemax"]
            return {k: getattr(sv, k) for k in keys}

        def open(self, path: str, flags: int) -> int:
            if path == _CONTROL_PATH:
                return _CONTROL_FH
            fd = os.open(state.real(path), _readable(flags))
            if flags & _SYNC_FLAGS:
                state.sync_fds.add(fd)
            return fd

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            flags = fi if isinstance(fi, int) else 0
            fd = os.open(state.real(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)
            state.created(path)
            if flags & _SYNC_FLAGS:
                state.sync_fds.add(fd)
            return fd

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            if fh == _CONTROL_FH:
                if data.strip() != b"crash":
                    raise fuse.FuseOSError(errno.EINVAL)
                changed = state.crash()
                print(f"lazyfs: crash {state.crashes}: {changed} files rolled back", flush=True)
                return len(data)
            return state.write(path, data, offset, fh)

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            if path != _CONTROL_PATH:
                state.truncate(path, length, fh)
            return 0

        def flush(self, path: str, fh: int) -> int:
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            if fh != _CONTROL_FH:
                state.fsync(path, fh)
            return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            return 0

        def release(self, path: str, fh: int) -> int:
            if fh != _CONTROL_FH:
                state.sync_fds.discard(fh)
                os.close(fh)
            return 0

    return LazyFS()


def crash(mount: Path) -> None:
    """Make the file system at ``mount`` lose every unsynced write."""
    with open(mount / CONTROL, "wb", buffering=0) as f:
        f.write(b"crash")


def unmount(mount: Path) -> None:
    """Unmount ``mount`` (lazily, so a mount whose daemon died goes too)."""
    for argv in (["fusermount3", "-u", "-z", str(mount)], ["umount", "-l", str(mount)]):
        try:
            if subprocess.run(argv, capture_output=True, check=False).returncode == 0:
                return
        except FileNotFoundError:
            continue


class LazyMounts:
    """lazyfs daemons, one per mount point, for the length of a chaos run.

    :meth:`mount` puts a lazyfs over ``mountpoint`` (its data in
    ``<mountpoint>.disk``) before the server using it starts; :meth:`close`
    unmounts them all (after the servers are down).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        #: Name (e.g. a sandbox process name) -> mount point.
        self.mounts: dict[str, Path] = {}
        self._procs: list[subprocess.Popen[bytes]] = []

    def mount(self, name: str, mountpoint: Path, *, timeout_s: float = 15.0) -> None:
        mountpoint = mountpoint.resolve()
        if os.path.ismount(mountpoint):  # left over by a run that died
            unmount(mountpoint)
        backing = mountpoint.with_name(mountpoint.name + ".disk")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"lazyfs-{mountpoint.name}.log"
        argv = [sys.executable, "-m", "meridian.chaos.lazyfs"]
        argv += ["--backing", str(backing), "--mount", str(mountpoint)]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._procs.append(proc)
        deadline = time.monotonic() + timeout_s
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"lazyfs over {mountpoint} did not mount: {tail}")
            time.sleep(0.05)
        self.mounts[name] = mountpoint

    def close(self) -> None:
        for mountpoint in self.mounts.values():
            unmount(mountpoint)
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.mounts.clear()
        self._procs.clear()


@click.command()
@click.option("--backing", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--mount", "mount", required=True, type=click.Path(file_okay=False, path_type=Path))
def main(backing: Path, mount: Path) -> None:
    import mfusepy as fuse

    backing.mkdir(parents=True, exist_ok=True)
    mount.mkdir(parents=True, exist_ok=True)
    print(f"lazyfs: {mount} over {backing}", flush=True)
    try:
        fuse.FUSE(_operations(LazyState(backing)), str(mount), foreground=True, nothreads=False)
    except RuntimeError as exc:
        print(f"lazyfs: mount failed: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
