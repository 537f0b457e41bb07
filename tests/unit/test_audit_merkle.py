"""audit.merkle: RFC 9162 tree hashes and proofs against the reference vectors."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian.audit.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

h = bytes.fromhex

# Vectors of github.com/transparency-dev/merkle, testonly/constants.go
# (LeafInputs, NodeHashes, RootHashes, CompactTrees), the RFC 6962 tree (the
# same hashing as RFC 9162) over these eight leaves.
LEAVES = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]
NODES = [
    [
        h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
        h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
        h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ],
    [
        h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ],
    [
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ],
    [h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]
#: RootHashes: the root of the first n leaves, n = 0..8.
ROOTS = [
    h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]
#: CompactTrees: the perfect-subtree roots of the first n leaves, as (level, index).
COMPACT = [
    [],
    [(0, 0)],
    [(1, 0)],
    [(1, 0), (0, 2)],
    [(2, 0)],
    [(2, 0), (0, 4)],
    [(2, 0), (1, 2)],
    [(2, 0), (1, 2), (0, 6)],
    [(3, 0)],
]

# Vectors of github.com/transparency-dev/merkle, cmd/proofgen/main.go
# (inclusionProofs, consistencyProofs), which generates its testdata/ probes.
# Its inclusion vectors number leaves from 1; these are 0-based.
INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (2, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]
#: sha256SomeHash of cmd/proofgen/main.go: a 32-byte value in no tree.
SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")
U64 = (1 << 64) - 1  # proofgen's sizes are uint64: 0 - 1 wraps around

LEAF_HASHES = [leaf_hash(d) for d in LEAVES]


def test_leaf_and_node_hashes_match_the_reference() -> None:
    assert NODES[0] == LEAF_HASHES
    for level in range(1, len(NODES)):
        below = NODES[level - 1]
        assert NODES[level] == [
            node_hash(below[2 * i], below[2 * i + 1]) for i in range(len(below) // 2)
        ]
    assert EMPTY_ROOT == ROOTS[0] == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("size", range(9))
def test_root_of_every_prefix_matches_the_reference(size: int) -> None:
    assert root(LEAF_HASHES[:size]) == ROOTS[size]
    tree = MerkleTree(LEAF_HASHES)
    assert tree.root_at(size) == ROOTS[size]
    assert MerkleTree(LEAF_HASHES[:size]).root() == ROOTS[size]
    assert tree.compact_range(size) == [NODES[lvl][i] for lvl, i in COMPACT[size]]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_reference(index: int, size: int, proof: list[bytes]) -> None:
    assert inclusion_proof(index, LEAF_HASHES[:size]) == proof
    assert MerkleTree(LEAF_HASHES).inclusion_proof(index, size) == proof
    assert verify_inclusion(index, size, LEAF_HASHES[index], proof, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_reference(old: int, new: int, proof: list[bytes]) -> None:
    assert consistency_proof(old, LEAF_HASHES[:new]) == proof
    assert MerkleTree(LEAF_HASHES).consistency_proof(old, new) == proof
    assert verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


def corrupted_inclusion(
    i: int, n: int, leaf: bytes, proof: list[bytes], r: bytes
) -> list[tuple[str, int, int, bytes, list[bytes], bytes]]:
    """cmd/proofgen's invalidInclusionProof: every way the probes break a proof."""
    out = [
        ("leafIdx sub 1", (i - 1) & U64, n, leaf, proof, r),
        ("leafIdx plus 1", i + 1, n, leaf, proof, r),
        ("leafIdx XOR 2", i ^ 2, n, leaf, proof, r),
        ("treeSize mul 2", i, n * 2, leaf, proof, r),
        ("treeSize div 2", i, n // 2, leaf, proof, r),
        ("wrong leaf", i, n, b"WrongLeaf", proof, r),
        ("empty root", i, n, leaf, proof, EMPTY_ROOT),
        ("random root", i, n, leaf, proof, SOME_HASH),
        ("trailing garbage", i, n, leaf, [*proof, b""], r),
        ("trailing root", i, n, leaf, [*proof, r], r),
        ("preceding garbage", i, n, leaf, [b"", *proof], r),
        ("preceding root", i, n, leaf, [r, *proof], r),
    ]
    for k in range(len(proof)):
        bad = list(proof)
        bad[k] = bytes([bad[k][0] ^ 8]) + bad[k][1:]
        out.append((f"modified proof[{k}] bit 3", i, n, leaf, bad, r))
    if proof:
        out.append(("removed component", i, n, leaf, proof[:-1], r))
    if len(proof) > 1:
        out.append(("inserted component", i, n, leaf, [proof[0], SOME_HASH, *proof[1:]], r))
    return out


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_the_reference_inclusion_probes_are_rejected(
    index: int, size: int, proof: list[bytes]
) -> None:
    for desc, i, n, leaf, p, r in corrupted_inclusion(
        index, size, LEAF_HASHES[index], proof, ROOTS[size]
    ):
        assert not verify_inclusion(i, n, leaf, p, r), desc


def test_the_reference_single_entry_and_static_inclusion_probes() -> None:
    # singleEntryInclusionProbes and staticInclusionProbes of cmd/proofgen.
    one = leaf_hash(b"data")
    assert verify_inclusion(0, 1, one, [], one)
    assert not verify_inclusion(0, 1, b"", [], one)
    assert not verify_inclusion(0, 1, one, [], b"")
    assert not verify_inclusion(0, 1, b"", [], b"")
    for index, size in [(0, 0), (0, 1), (1, 0), (2, 1)]:
        assert not verify_inclusion(index, size, SOME_HASH, [], b"")
        assert not verify_inclusion(index, size, b"", [], EMPTY_ROOT)
        assert not verify_inclusion(index, size, SOME_HASH, [], EMPTY_ROOT)


def corrupted_consistency(
    m: int, n: int, r1: bytes, r2: bytes, proof: list[bytes]
) -> list[tuple[str, int, int, bytes, bytes, list[bytes]]]:
    """cmd/proofgen's invalidConsistencyProof."""
    out = [
        ("size1 sub 1", (m - 1) & U64, n, r1, r2, proof),
        ("size1 plus 1", m + 1, n, r1, r2, proof),
        ("size1 XOR 2", m ^ 2, n, r1, r2, proof),
        ("size2 mul 2", m, n * 2, r1, r2, proof),
        ("size2 div 2", m, n // 2, r1, r2, proof),
        ("wrong root1", m, n, b"WrongRoot", r2, proof),
        ("wrong root2", m, n, r1, b"WrongRoot", proof),
        ("swapped roots", m, n, r2, r1, proof),
        ("empty proof", m, n, r1, r2, []),
        ("trailing garbage", m, n, r1, r2, [*proof, b""]),
        ("trailing root1", m, n, r1, r2, [*proof, r1]),
        ("trailing root2", m, n, r1, r2, [*proof, r2]),
        ("preceding garbage", m, n, r1, r2, [b"", *proof]),
        ("preceding root1", m, n, r1, r2, [r1, *proof]),
        ("preceding root2", m, n, r1, r2, [r2, *proof]),
        ("preceding proof[0]", m, n, r1, r2, [proof[0], *proof]),
        ("truncated proof", m, n, r1, r2, proof[:-1]),
    ]
    for k in range(len(proof)):
        bad = list(proof)
        bad[k] = bytes([bad[k][0] ^ 16]) + bad[k][1:]
        out.append((f"modified proof[{k}] bit 4", m, n, r1, r2, bad))
    return out


@pytest.mark.parametrize(("old", "new", "proof"), [c for c in CONSISTENCY if c[2]])
def test_the_reference_consistency_probes_are_rejected(
    old: int, new: int, proof: list[bytes]
) -> None:
    for desc, m, n, r1, r2, p in corrupted_consistency(old, new, ROOTS[old], ROOTS[new], proof):
        assert not verify_consistency(m, n, r1, r2, p), desc


# staticConsistencyProbes of cmd/proofgen/main.go: (size1, size2, root1, root2, proof, valid).
CARE1, CARE2 = b"don't care 1", b"don't care 2"
STATIC_CONSISTENCY = [
    (0, 0, CARE1, CARE2, [], False),
    (1, 1, CARE1, CARE2, [], False),
    (0, 0, CARE1, CARE1, [], False),
    (0, 1, CARE1, CARE2, [], False),
    (1, 1, CARE2, CARE2, [], True),
    (1, 0, CARE1, CARE2, [], False),
    (2, 1, CARE1, CARE2, [], False),
    (1, 2, CARE1, CARE2, [], False),
    (0, 0, EMPTY_ROOT, CARE2, [], False),
    (1, 1, EMPTY_ROOT, CARE2, [], False),
    (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
    (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
    (0, 1, EMPTY_ROOT, CARE2, [], False),
    (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
]


@pytest.mark.parametrize(("old", "new", "r1", "r2", "proof", "valid"), STATIC_CONSISTENCY)
def test_the_reference_static_consistency_probes(
    old: int, new: int, r1: bytes, r2: bytes, proof: list[bytes], valid: bool
) -> None:
    assert verify_consistency(old, new, r1, r2, proof) is valid


def test_generators_name_the_argument_and_the_rule() -> None:
    tree = MerkleTree(LEAF_HASHES)
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: inclusion_proof(8, LEAF_HASHES), "index: must be in 0..size-1"),
        (lambda: inclusion_proof(-1, LEAF_HASHES), "index: must be in 0..size-1"),
        (lambda: inclusion_proof(0, []), "index: must be in 0..size-1"),
        (lambda: inclusion_proof(True, LEAF_HASHES), "index"),
        (lambda: consistency_proof(9, LEAF_HASHES), "old_size: must be in 1..new_size"),
        (lambda: consistency_proof(0, LEAF_HASHES), "old_size: must be in 1..new_size"),
        (lambda: consistency_proof(-3, LEAF_HASHES), "old_size"),
        (lambda: root([b"short"]), "leaf_hashes[0]: must be a 32-byte hash"),
        (lambda: tree.root_at(9), "size: must be in 0..8"),
        (lambda: tree.inclusion_proof(3, 3), "index: must be in 0..size-1"),
        (lambda: tree.inclusion_proof(0, 9), "size: must be in 0..8"),
        (lambda: tree.consistency_proof(5, 4), "old_size: must be in 1..new_size"),
        (lambda: tree.consistency_proof(1, -1), "new_size"),
        (lambda: tree.append(b"x" * 31), "leaf_hash: must be a 32-byte hash"),
        (lambda: tree.leaf_hash(8), "index"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            call()
    assert tree.size == 8  # the refused append changed nothing


def test_verifiers_never_raise_on_nonsense() -> None:
    junk: list[object] = [None, "x", -1, 2**70, b"", b"\x00" * 33, [b"\x00" * 32]]
    for value in junk:
        assert not verify_inclusion(value, 8, LEAF_HASHES[0], [], ROOTS[8])  # type: ignore[arg-type]
        assert not verify_inclusion(0, value, LEAF_HASHES[0], [], ROOTS[8])  # type: ignore[arg-type]
        assert not verify_inclusion(0, 8, value, [], ROOTS[8])  # type: ignore[arg-type]
        assert not verify_inclusion(0, 8, LEAF_HASHES[0], [value], ROOTS[8])  # type: ignore[list-item]
        assert not verify_consistency(value, 8, ROOTS[1], ROOTS[8], [])  # type: ignore[arg-type]
        assert not verify_consistency(1, 8, ROOTS[1], ROOTS[8], [value])  # type: ignore[list-item]
    # A proof far longer than any path stops at the root.
    assert not verify_inclusion(0, 8, LEAF_HASHES[0], [SOME_HASH] * 10_000, ROOTS[8])


# --- properties against a literal transcription of RFC 9162 §2.1 -------------


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return EMPTY_ROOT
    if len(d) == 1:
        return d[0]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def flips(value: bytes) -> list[bytes]:
    """``value`` with each of its bytes changed in turn."""
    return [value[:i] + bytes([value[i] ^ 0x01]) + value[i + 1 :] for i in range(len(value))]


def tree_of(n: int, seed: int) -> list[bytes]:
    return [leaf_hash(f"{seed}/{i}".encode()) for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.data(), st.integers(0, 2**16))
def test_every_inclusion_proof_verifies_and_any_flip_breaks_it(
    n: int, data: st.DataObject, seed: int
) -> None:
    leaves = tree_of(n, seed)
    i = data.draw(st.integers(0, n - 1), label="index")
    r = root(leaves)
    proof = inclusion_proof(i, leaves)
    assert proof == ref_path(i, leaves) == MerkleTree(leaves).inclusion_proof(i)
    assert r == ref_mth(leaves)
    assert verify_inclusion(i, n, leaves[i], proof, r)
    for k, node in enumerate(proof):
        for bad in flips(node):
            assert not verify_inclusion(i, n, leaves[i], [*proof[:k], bad, *proof[k + 1 :]], r)
    assert not any(verify_inclusion(i, n, leaves[i], proof, bad) for bad in flips(r))
    assert not any(verify_inclusion(i, n, bad, proof, r) for bad in flips(leaves[i]))
    assert not verify_inclusion(i, n, leaves[i], proof[:-1], r) or not proof


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.data(), st.integers(0, 2**16))
def test_every_consistency_proof_verifies_and_any_flip_breaks_it(
    n: int, data: st.DataObject, seed: int
) -> None:
    leaves = tree_of(n, seed)
    m = data.draw(st.integers(1, n), label="old_size")
    r1, r2 = root(leaves[:m]), root(leaves)
    proof = consistency_proof(m, leaves)
    assert proof == ref_subproof(m, leaves, True) == MerkleTree(leaves).consistency_proof(m)
    assert verify_consistency(m, n, r1, r2, proof)
    for k, node in enumerate(proof):
        for bad in flips(node):
            assert not verify_consistency(m, n, r1, r2, [*proof[:k], bad, *proof[k + 1 :]])
    assert not any(verify_consistency(m, n, bad, r2, proof) for bad in flips(r1))
    assert not any(verify_consistency(m, n, r1, bad, proof) for bad in flips(r2))
    if m < n:
        assert not verify_consistency(m, n, r1, r2, proof[:-1])
        assert not verify_consistency(m, n, r1, r2, [*proof, r2])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 300), st.integers(0, 2**16))
def test_the_incremental_tree_agrees_with_root_for_every_prefix(n: int, seed: int) -> None:
    leaves = tree_of(n, seed)
    tree = MerkleTree()
    assert tree.root() == EMPTY_ROOT
    for k, leaf in enumerate(leaves, start=1):
        assert tree.append(leaf) == k - 1
        assert tree.root() == root(leaves[:k])
    assert len(tree) == tree.size == n
    assert [tree.root_at(k) for k in range(n + 1)] == [root(leaves[:k]) for k in range(n + 1)]
    assert [tree.leaf_hash(k) for k in range(n)] == leaves


def test_a_million_leaves_hash_in_a_few_seconds() -> None:
    # About 2 * 10^6 SHA-256 calls in all (one per leaf for root(), one per
    # leaf amortised for the tree): a few seconds in CPython.
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(1_000_000)]
    tree = MerkleTree(leaves)
    r = root(leaves)
    assert tree.root() == r
    for i in (0, 1, 524_287, 524_288, 999_999):
        assert verify_inclusion(i, 1_000_000, leaves[i], tree.inclusion_proof(i), r)
    for m in (1, 524_288, 999_999):
        proof = tree.consistency_proof(m)
        assert verify_consistency(m, 1_000_000, tree.root_at(m), r, proof)
