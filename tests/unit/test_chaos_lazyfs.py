"""lazyfs's bookkeeping: after a crash every file holds exactly what it held at its last fsync.

The property runs random writes, truncations and fsyncs against a real file
through :class:`LazyState` (no FUSE mount here; ``tests/integration/test_lazyfs.py``
mounts one), keeping a model of the last synced content beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from meridian.chaos.lazyfs import LazyState

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 300), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("truncate"), st.integers(0, 300), st.just(b"")),
        st.tuples(st.just("fsync"), st.just(0), st.just(b"")),
    ),
    max_size=30,
)


def _open(state: LazyState, name: str) -> int:
    return os.open(state.real(name), os.O_RDWR)


@settings(max_examples=150, deadline=None)
@given(initial=st.binary(max_size=200), steps=ops)
def test_a_crash_leaves_each_file_as_it_was_at_its_last_fsync(
    tmp_path_factory: object, initial: bytes, steps: list[tuple[str, int, bytes]]
) -> None:
    root = Path(tmp_path_factory.mktemp("lazy"))  # type: ignore[attr-defined]
    (root / "f").write_bytes(initial)
    state = LazyState(root)
    fd = _open(state, "/f")
    durable = initial
    try:
        for kind, n, data in steps:
            if kind == "write":
                state.write("/f", data, n, fd)
            elif kind == "truncate":
                state.truncate("/f", n, fd)
            else:
                state.fsync("/f", fd)
                durable = (root / "f").read_bytes()
    finally:
        os.close(fd)
    state.crash()
    assert (root / "f").read_bytes() == durable


def test_a_file_created_and_written_but_never_synced_is_empty_after_a_crash(
    tmp_path: Path,
) -> None:
    state = LazyState(tmp_path)
    fd = os.open(state.real("/new"), os.O_RDWR | os.O_CREAT)
    state.created("/new")
    state.write("/new", b"acknowledged but not synced", 0, fd)
    os.close(fd)
    assert state.crash() == 1
    assert (tmp_path / "new").read_bytes() == b""


def test_rename_carries_unsynced_writes_and_unlink_forgets_them(tmp_path: Path) -> None:
    state = LazyState(tmp_path)
    (tmp_path / "a").write_bytes(b"old")
    (tmp_path / "b").write_bytes(b"gone")
    fd = _open(state, "/a")
    state.write("/a", b"NEW!", 0, fd)
    os.close(fd)
    fd = _open(state, "/b")
    state.write("/b", b"x", 0, fd)
    os.close(fd)
    os.rename(tmp_path / "a", tmp_path / "c")
    state.renamed("/a", "/c")
    os.unlink(tmp_path / "b")
    state.removed("/b")
    assert state.crash() == 1
    assert (tmp_path / "c").read_bytes() == b"old"
    assert not (tmp_path / "b").exists()


def test_writes_through_an_o_sync_descriptor_are_synced(tmp_path: Path) -> None:
    state = LazyState(tmp_path)
    (tmp_path / "s").write_bytes(b"")
    fd = _open(state, "/s")
    state.sync_fds.add(fd)
    state.write("/s", b"durable", 0, fd)
    os.close(fd)
    assert state.crash() == 0
    assert (tmp_path / "s").read_bytes() == b"durable"
