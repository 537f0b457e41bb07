"""RFC 9162 (Certificate Transparency v2) Merkle trees, as pure functions.

The tree is the one of RFC 9162 §2.1.1 (the same as RFC 6962 §2.1):

- a leaf hash is ``SHA-256(0x00 || entry)`` and an interior node hash is
  ``SHA-256(0x01 || left || right)``, so a leaf can never pass for a node;
- the tree of ``n > 1`` leaves splits at ``k``, the largest power of two
  smaller than ``n``: its left child is the perfect tree of the first ``k``
  leaves, its right child the tree of the other ``n - k``;
- the empty tree's hash is ``SHA-256("")``.

Everything here takes *leaf hashes*, not entries: the audit log stores
``leaf_hash(entry)`` next to each entry, so a verifier rebuilds the tree from
the stream without keeping the entries.

Proof generation (:func:`inclusion_proof`, :func:`consistency_proof`)
follows the recursive definitions PATH and PROOF/SUBPROOF of §2.1.3.1 and
§2.1.4.1; verification (:func:`verify_inclusion`, :func:`verify_consistency`)
is the iterative algorithm of §2.1.3.2 and §2.1.4.2, step for step, so the
two sides are independent and the tests check one against the other and
against the published vectors of transparency-dev/merkle.

Generators raise :class:`ValueError` for impossible arguments; verifiers take
what an untrusted log sent and never raise on a value: anything that does not
prove the claim returns ``False``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

#: Size of every hash in the tree (SHA-256).
HASH_SIZE = 32
#: The hash of the empty tree, ``SHA-256("")`` (RFC 9162 §2.1.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

#: ``mth(lo, hi)``: the tree hash of leaves ``lo`` (inclusive) to ``hi`` (exclusive).
_SubtreeHash = Callable[[int, int], bytes]


def leaf_hash(data: bytes | bytearray) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of a leaf holding ``data`` (32 bytes)."""
    return hashlib.sha256(_LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes | bytearray, right: bytes | bytearray) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node (32 bytes)."""
    return hashlib.sha256(_NODE_PREFIX + bytes(left) + bytes(right)).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_int(value: object) -> bool:
    # bool is an int subclass; True is never a tree size or an index.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes | bytearray | memoryview) and len(value) == HASH_SIZE


def _check_hashes(leaf_hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(leaf_hashes):
        if not _is_hash(h):
            raise ValueError(f"leaf_hashes[{i}]: must be a {HASH_SIZE}-byte hash")


def _check_size(name: str, value: object, low: int, high: int | None, rule: str) -> None:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        raise ValueError(f"{name}: {rule}, got {value!r}")


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH: the root hash of the tree over ``leaf_hashes`` (RFC 9162 §2.1.1).

    Returns :data:`EMPTY_ROOT` for no leaves and the leaf hash itself for one.
    Costs one node hash per leaf (n - 1 in all; about 1.5 s for 10^6 leaves
    in CPython) and O(log n) extra memory.
    Raises :class:`ValueError` if a leaf hash is not 32 bytes.
    """
    _check_hashes(leaf_hashes)
    # The left-to-right stack of perfect-subtree roots (a compact range): leaf
    # i closes one perfect subtree for every trailing one bit of i.
    stack: list[bytes] = []
    for i, h in enumerate(leaf_hashes):
        h = bytes(h)
        n = i
        while n & 1:
            h = node_hash(stack.pop(), h)
            n >>= 1
        stack.append(h)
    if not stack:
        return EMPTY_ROOT
    # The RFC's split at the largest power of two puts the biggest perfect
    # subtree on the left, so folding the stack from the right is MTH.
    acc = stack.pop()
    while stack:
        acc = node_hash(stack.pop(), acc)
    return acc


def _path(index: int, size: int, mth: _SubtreeHash) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, ``0 <= index < size``.

    The recursion appends each level's sibling after the deeper levels, so
    walking down from the root collects the siblings in reverse.
    """
    siblings: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            siblings.append(mth(lo + k, hi))
            hi = lo + k
        else:
            siblings.append(mth(lo, lo + k))
            lo += k
    siblings.reverse()
    return siblings


def _proof(old_size: int, new_size: int, mth: _SubtreeHash) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) = SUBPROOF(old_size, D[0:new_size], true)
    of RFC 9162 §2.1.4.1, ``1 <= old_size <= new_size``."""
    nodes: list[bytes] = []
    lo, hi = 0, new_size
    known = True  # b: whether MTH(D[lo:old_size]) is the old root the client has
    while old_size != hi:
        k = _split(hi - lo)
        if old_size <= lo + k:
            nodes.append(mth(lo + k, hi))
            hi = lo + k
        else:
            nodes.append(mth(lo, lo + k))
            lo += k
            known = False
    if not known:
        nodes.append(mth(lo, hi))
    nodes.reverse()
    return nodes


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The inclusion proof (PATH, RFC 9162 §2.1.3.1) of leaf ``index`` in the
    tree over ``leaf_hashes``: the sibling hashes from the leaf up to the root.

    Costs O(n) hashes. Raises :class:`ValueError` unless
    ``0 <= index < len(leaf_hashes)``, or if a leaf hash is not 32 bytes.
    """
    size = len(leaf_hashes)
    _check_size("index", index, 0, size - 1, f"must be in 0..size-1 (index < size), size is {size}")
    _check_hashes(leaf_hashes)
    return _path(index, size, lambda lo, hi: root(leaf_hashes[lo:hi]))


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The consistency proof (PROOF, RFC 9162 §2.1.4.1) that the tree over
    the first ``old_size`` of ``leaf_hashes`` is a prefix of the tree over all.

    Empty when ``old_size == len(leaf_hashes)``. Costs O(n) hashes. Raises
    :class:`ValueError` unless ``1 <= old_size <= len(leaf_hashes)``: RFC 9162
    defines no proof from the empty tree (every tree extends it, so there is
    nothing to prove), nor from a tree larger than the new one.
    """
    size = len(leaf_hashes)
    _check_size(
        "old_size",
        old_size,
        1,
        size,
        f"must be in 1..new_size (0 < old_size <= new_size), new_size is {size}",
    )
    _check_hashes(leaf_hashes)
    return _proof(old_size, size, lambda lo, hi: root(leaf_hashes[lo:hi]))


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows the leaf ``leaf_hash`` at ``index`` in the tree
    of ``size`` leaves with root hash ``root`` (RFC 9162 §2.1.3.2).

    ``True`` only for exactly the proof :func:`inclusion_proof` gives. Returns
    ``False``, never raises, for anything else: a proof too short or too
    long, a hash that is not 32 bytes, ``index >= size``, a negative value.
    ``size`` and ``root`` must come from one verified checkpoint: the same
    path can also fit another size (5 and 6 leaves share leaf 0's path).
    """
    if not (_is_int(index) and _is_int(size) and 0 <= index < size):
        return False
    if not _is_hash(leaf_hash) or not _is_hash(root):
        return False
    if not all(_is_hash(p) for p in proof):
        return False
    fn, sn = index, size - 1
    r = bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            return False  # the proof is longer than the path
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                # fn is the last node of its level: skip the levels where it
                # has no right sibling.
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == bytes(root)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the tree of ``old_size`` leaves with root
    ``old_root`` is a prefix of the tree of ``new_size`` leaves with root
    ``new_root`` (RFC 9162 §2.1.4.2).

    Equal sizes need an empty proof and equal roots. ``old_size == 0`` is
    never proven (RFC 9162 defines proofs for ``0 < old_size``, and the
    reference implementation rejects it): every tree extends the empty one, so
    a client that trusted size 0 has nothing to check. Returns ``False``,
    never raises, for anything that is not the proof
    :func:`consistency_proof` gives: wrong length, wrong hashes,
    ``old_size > new_size``, negative sizes.
    """
    if not (_is_int(old_size) and _is_int(new_size) and 0 < old_size <= new_size):
        return False
    if not all(_is_hash(p) for p in proof):
        return False
    if old_size == new_size:
        return len(proof) == 0 and bytes(old_root) == bytes(new_root)
    if not _is_hash(old_root) or not _is_hash(new_root) or len(proof) == 0:
        return False
    path = [bytes(p) for p in proof]
    if old_size & (old_size - 1) == 0:
        # The old tree is a perfect subtree of the new one: its root starts
        # the path instead of being sent.
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False  # the proof is longer than the path
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == bytes(old_root) and sr == bytes(new_root)


class MerkleTree:
    """An append-only RFC 9162 tree that answers roots and proofs for any
    size it has had.

    It keeps every perfect subtree's hash, level by level, each level one
    contiguous ``bytearray`` of 32-byte hashes: about 2n hashes in all, 64 MB
    for 10^6 leaves and no per-hash Python object. The last node of each
    level whose bit is set in the size is the compact range (the stack of
    perfect-subtree roots of transparency-dev/merkle's ``compact.Range``).

    Costs: :meth:`append` hashes one node amortised (at most log2 n), so
    10^6 appends are about 10^6 SHA-256 calls, about 2 s in CPython;
    :meth:`root` and :meth:`root_at` fold at most log2 n perfect subtrees;
    :meth:`inclusion_proof` and :meth:`consistency_proof` take O(log² n).
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        """A tree holding ``leaf_hashes``; :class:`ValueError` if one is not 32 bytes."""
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """The number of leaves."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Add ``leaf_hash`` as the next leaf and return its index.

        Raises :class:`ValueError` (and changes nothing) if it is not 32 bytes.
        """
        if not _is_hash(leaf_hash):
            raise ValueError(f"leaf_hash: must be a {HASH_SIZE}-byte hash")
        index = self._size
        levels = self._levels
        h = bytes(leaf_hash)
        levels[0] += h
        # Every trailing one bit of the index closes a perfect subtree.
        i, level = index, 0
        while i & 1:
            at = (i - 1) * HASH_SIZE
            h = node_hash(levels[level][at : at + HASH_SIZE], h)
            level += 1
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += h
            i >>= 1
        self._size = index + 1
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """:meth:`append` each of ``leaf_hashes`` in order."""
        for h in leaf_hashes:
            self.append(h)

    def leaf_hash(self, index: int) -> bytes:
        """The hash of leaf ``index``; :class:`ValueError` unless ``0 <= index < size``."""
        _check_size("index", index, 0, self._size - 1, f"must be in 0..{self._size - 1}")
        return self._node(0, index)

    def compact_range(self, size: int | None = None) -> list[bytes]:
        """The roots of the perfect subtrees that make up the tree of ``size``
        leaves (default: all), biggest (leftmost) first."""
        size = self._checked_size("size", size)
        out: list[bytes] = []
        for level in reversed(range(size.bit_length())):
            if size >> level & 1:
                out.append(self._node(level, (size >> level) - 1))
        return out

    def root(self) -> bytes:
        """The root hash of the whole tree (:data:`EMPTY_ROOT` when empty)."""
        return self._mth(0, self._size)

    def root_at(self, size: int) -> bytes:
        """The root hash the tree had at ``size`` leaves; :class:`ValueError`
        unless ``0 <= size <= self.size``."""
        return self._mth(0, self._checked_size("size", size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The proof of leaf ``index`` in the tree of ``size`` leaves (default:
        all), as :func:`inclusion_proof`. :class:`ValueError` unless
        ``0 <= index < size <= self.size``."""
        size = self._checked_size("size", size)
        _check_size(
            "index", index, 0, size - 1, f"must be in 0..size-1 (index < size), size is {size}"
        )
        return _path(index, size, self._mth)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The proof that the tree of ``old_size`` leaves is a prefix of the tree
        of ``new_size`` (default: all), as :func:`consistency_proof`.
        :class:`ValueError` unless ``1 <= old_size <= new_size <= self.size``."""
        new_size = self._checked_size("new_size", new_size)
        _check_size(
            "old_size",
            old_size,
            1,
            new_size,
            f"must be in 1..new_size (0 < old_size <= new_size), new_size is {new_size}",
        )
        return _proof(old_size, new_size, self._mth)

    def _checked_size(self, name: str, size: int | None) -> int:
        if size is None:
            return self._size
        _check_size(name, size, 0, self._size, f"must be in 0..{self._size} (the tree's size)")
        return size

    def _node(self, level: int, index: int) -> bytes:
        at = index * HASH_SIZE
        return bytes(self._levels[level][at : at + HASH_SIZE])

    def _mth(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a range the RFC recursion visits: ``lo`` is a
        multiple of the power of two at or above ``hi - lo``, so the range is
        the perfect subtrees given by the bits of ``hi - lo``, left to right."""
        if lo == hi:
            return EMPTY_ROOT
        nodes: list[bytes] = []
        n, pos = hi - lo, lo
        for level in reversed(range(n.bit_length())):
            if n >> level & 1:
                nodes.append(self._node(level, pos >> level))
                pos += 1 << level
        acc = nodes.pop()
        while nodes:
            acc = node_hash(nodes.pop(), acc)
        return acc
