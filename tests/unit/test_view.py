"""Freshness proofs of a keyspace view (pure): what makes a view provably fresh."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meridian.state.model.view import MAX_PENDING_PROOFS, Freshness, KeyspaceView, StoredEntry


def entry(key: str, seq: int) -> StoredEntry:
    return StoredEntry(key, str(seq).encode(), seq, 0, "us-east")


def test_a_view_is_never_fresh_before_a_proof() -> None:
    view: KeyspaceView[StoredEntry] = KeyspaceView()
    view.apply(1, "a", entry("a", 1), pending=0)
    assert view.staleness(10.0) is None


def test_a_proof_settles_once_the_view_is_complete_up_to_it() -> None:
    view: KeyspaceView[StoredEntry] = KeyspaceView()
    view.prove(5.0, 3)
    view.apply(1, "a", entry("a", 1), pending=2)
    view.apply(2, "b", entry("b", 2), pending=1)
    assert view.staleness(6.0) is None
    view.apply(3, "a", entry("a", 3), pending=0)
    assert view.staleness(6.0) == 1.0


def test_applying_the_proven_sequence_is_not_enough_while_messages_are_pending() -> None:
    # A snapshot delivers the last message per key: a skipped write of "a" at 2
    # shows only once its replacement at 9 arrives, so applying 4 proves nothing.
    view: KeyspaceView[StoredEntry] = KeyspaceView()
    view.prove(5.0, 4)
    view.apply(3, "b", entry("b", 3), pending=2)
    view.apply(4, "c", entry("c", 4), pending=1)
    assert view.applied_seq == 4
    assert view.staleness(6.0) is None
    view.apply(9, "a", entry("a", 9), pending=0)
    assert view.staleness(6.0) == 1.0


def test_a_proof_for_what_the_view_already_holds_settles_at_once() -> None:
    view: KeyspaceView[StoredEntry] = KeyspaceView()
    view.apply(7, "a", entry("a", 7), pending=0)
    view.prove(2.0, 7)
    assert view.staleness(2.5) == 0.5


def test_staleness_grows_without_new_proofs() -> None:
    f = Freshness()
    f.completed(10)
    f.prove(1.0, 10)
    assert f.staleness(1.0) == 0.0
    assert f.staleness(31.0) == 30.0


def test_proofs_may_arrive_out_of_order() -> None:
    # Pipelined barriers: the one asked later may commit (and answer) first.
    f = Freshness()
    f.prove(2.0, 5)  # asked later, smaller sequence
    f.prove(1.0, 7)
    f.completed(5)
    assert f.synced_at == 2.0
    f.completed(7)
    assert f.synced_at == 2.0  # an older proof never moves synced_at back


def test_too_many_unsettled_proofs_drop_the_oldest_only() -> None:
    f = Freshness()
    for i in range(MAX_PENDING_PROOFS + 10):
        f.prove(float(i), 100 + i)
    f.completed(100 + MAX_PENDING_PROOFS + 9)
    assert f.synced_at == float(MAX_PENDING_PROOFS + 9)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["prove", "complete"]),
            st.integers(0, 50),
            st.floats(0, 100, allow_nan=False),
        ),
        max_size=60,
    )
)
def test_synced_at_is_always_a_proof_the_view_is_complete_for(
    steps: list[tuple[str, int, float]],
) -> None:
    """Whatever the order, synced_at is the time of some proof whose sequence is
    at most complete_seq, and the latest such."""
    f = Freshness()
    proofs: list[tuple[float, int]] = []
    for kind, seq, at in steps:
        if kind == "prove":
            f.prove(at, seq)
            proofs.append((at, seq))
        else:
            f.completed(seq)
    settled = [at for at, seq in proofs if seq <= f.complete_seq]
    if len(proofs) <= MAX_PENDING_PROOFS:
        assert f.synced_at == (max(settled) if settled else None)
    else:
        assert f.synced_at is None or f.synced_at in settled
