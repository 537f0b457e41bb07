"""Verify a whole audit log: its entries against the checkpoints the regions signed.

A verifier holds what anyone can fetch: the entries in stream order (leaf
``i`` is ``leaf_hash(entries[i])``, the data of stream message ``i + 1``) and
the checkpoint notes the regions published. Each region has one Ed25519 key,
named ``<region>.audit.<trust domain>`` (:func:`key_name`): it signs the
region's own checkpoints for the origin ``<trust domain>/audit``
(:func:`log_origin`) with a plain signed-note signature (type 0x01), and
cosigns the other regions' checkpoints it agrees with (tlog-cosignature, type
0x04), so a region has two verifiers (:func:`region_verifiers`).

:func:`verify_log` rebuilds the tree from the entries and checks every signed
checkpoint against it and against the others; :func:`prove` and
:func:`format_proof` serve ``meridian audit prove``. Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# split_note is the very reader verify_note uses, so a note is malformed here
# exactly when it is there. verify_note itself does not fit: it stops at the
# first bad signature and wants one required key, while this module must name
# every bad signature and accept any region as the signer.
from meridian.audit.checkpoint import (
    Checkpoint,
    KeyRef,
    SignatureType,
    Verifier,
    split_note,
)
from meridian.audit.merkle import MerkleTree, leaf_hash, verify_consistency
from meridian.audit.model import REGION_NAME, AuditEntry

#: Entries that do not parse are reported one by one up to this many, then
#: counted: a log of a million garbage entries still gives a readable report.
MAX_ENTRY_PROBLEMS = 100

#: Characters RFC 8785 escapes in a string: a request ID holding none of them
#: appears verbatim in its entry's canonical bytes.
_JSON_ESCAPED = re.compile(r'[\x00-\x1f"\\]')


def log_origin(trust_domain: str) -> str:
    """The checkpoint origin of the audit log of ``trust_domain``: ``<trust domain>/audit``."""
    return f"{trust_domain}/audit"


def key_name(region: str, trust_domain: str) -> str:
    """The note key name of ``region``'s audit key: ``<region>.audit.<trust domain>``."""
    return f"{region}.audit.{trust_domain}"


class RegionVerifiers(NamedTuple):
    """The two verifiers of one region's audit key (same public key, two key IDs)."""

    #: Type 0x01: the region's signature on its own checkpoints.
    signer: Verifier
    #: Type 0x04: the region's cosignature on another region's checkpoint.
    cosigner: Verifier


def region_verifiers(
    region: str, trust_domain: str, public_key: Ed25519PublicKey | bytes
) -> RegionVerifiers:
    """Both verifiers of ``region``'s audit key, named :func:`key_name`.

    Raises :class:`ValueError` if ``region`` is not a region name (2-32 of
    a-z, 0-9, '-'), the resulting key name is not a valid note key name, or
    the key is not a 32-byte Ed25519 public key.
    """
    if not isinstance(region, str) or not REGION_NAME.fullmatch(region):
        raise ValueError(f"region: must be a region name, got {region!r:.40}")
    if not isinstance(trust_domain, str) or not trust_domain:
        raise ValueError("trust_domain: must be a non-empty string")
    name = key_name(region, trust_domain)
    return RegionVerifiers(
        Verifier.from_public_key(name, public_key, SignatureType.ED25519),
        Verifier.from_public_key(name, public_key, SignatureType.COSIGNATURE_V1),
    )


class CheckpointStatus(StrEnum):
    """What :func:`verify_log` concluded about one checkpoint."""

    #: Matches the entries, agrees with the others, cosigned enough.
    OK = "ok"
    #: Sound, but fewer than ``min_cosigners`` other regions cosigned it.
    UNCOSIGNED = "uncosigned"
    #: Beyond the entries, another root than the entries', a fork, or
    #: inconsistent with a later checkpoint.
    INVALID = "invalid"


@dataclass(frozen=True)
class CheckpointResult:
    """One signed checkpoint as :func:`verify_log` judged it."""

    size: int
    #: The checkpoint's root hash, 64 lowercase hex digits.
    root: str
    #: Regions whose log signature (type 0x01) on it verified, sorted.
    signers: tuple[str, ...]
    #: Other regions whose cosignature (type 0x04) verified, sorted; a
    #: signer's own cosignature is not counted.
    cosigners: tuple[str, ...]
    status: CheckpointStatus


@dataclass(frozen=True)
class VerifyReport:
    """The verdict of :func:`verify_log`.

    ``size`` and ``root`` describe the tree of the entries given;
    ``checkpoints`` lists every checkpoint some region signed, by size then
    root; ``problems`` are evidence of tampering or forgery, ``warnings``
    what is not (yet) vouched for. Each message names what and where.
    """

    size: int
    root: bytes
    checkpoints: list[CheckpointResult]
    problems: list[str]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong (warnings allowed)."""
        return not self.problems


@dataclass
class _Seen:
    """One checkpoint body and the regions that vouched for it, over all notes."""

    checkpoint: Checkpoint
    signers: set[str] = field(default_factory=set)
    cosigners: set[str] = field(default_factory=set)
    matches: bool = False
    status: CheckpointStatus = CheckpointStatus.OK

    @property
    def label(self) -> str:
        return f"checkpoint of size {self.checkpoint.size} signed by {_names(self.signers)}"


def _names(regions: Iterable[str]) -> str:
    return ", ".join(sorted(regions)) or "no region"


def _short(digest: bytes) -> str:
    return digest.hex()[:16] + ".."


def _as_bytes(value: object, where: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ValueError(f"{where}: must be bytes, got {type(value).__name__}")
    return bytes(value)


def verify_log(
    entries: Sequence[bytes],
    notes: Sequence[bytes],
    keys: Mapping[str, Ed25519PublicKey],
    *,
    trust_domain: str,
    min_cosigners: int = 1,
) -> VerifyReport:
    """Check the log ``entries`` against the checkpoint ``notes``.

    ``keys`` maps each region to its audit public key. Everything in
    ``entries`` and ``notes`` is untrusted and is reported on, never raised:

    - an entry that :meth:`AuditEntry.parse` refuses is a problem (it is
      still a leaf: the tree commits to bytes);
    - in a note, a signature by an unknown key is ignored (signed-note), one
      by a known key that does not verify is a problem (forgery); a note
      with no verified signature, that is not a checkpoint, or whose origin
      is not :func:`log_origin` is a problem;
    - notes with the same body are one checkpoint; it needs a verified log
      signature (type 0x01) by at least one region, else it is a problem;
    - a checkpoint beyond the entries ("entries were removed"), or whose root
      is not the entries' root at its size, is a problem;
    - fewer than ``min_cosigners`` regions beyond one signer vouch for it
      (signed or cosigned it; a region's cosignature of its own checkpoint
      does not add a region):
      a problem for an older checkpoint, a warning for the newest (its
      cosignatures may still be on their way);
    - two checkpoints of one size with different roots are a fork;
    - of successive checkpoint sizes, when the newer matches the entries,
      the consistency proof the entries give must connect the older root to
      it, else the log rewrote signed history. (When the newer one does not
      match the entries, a proof from them shows nothing about the pair and
      its root problem is already reported.)

    Also warned: entries no checkpoint covers yet, a signature under a
    region's key name but with another key ID. Cosignature times are not
    judged (no clock). Raises :class:`ValueError` only for bad arguments:
    ``min_cosigners`` not an int >= 0, a bad region name or key, an entry or
    note that is not bytes.
    """
    if not isinstance(min_cosigners, int) or isinstance(min_cosigners, bool) or min_cosigners < 0:
        raise ValueError(f"min_cosigners: must be an integer >= 0, got {min_cosigners!r}")
    known: dict[KeyRef, tuple[str, Verifier]] = {}
    regions_by_name: dict[str, str] = {}
    for region, public_key in keys.items():
        for verifier in region_verifiers(region, trust_domain, public_key):
            known[verifier.ref] = (region, verifier)
        regions_by_name[key_name(region, trust_domain)] = region
    problems: list[str] = []
    warnings: list[str] = []
    tree = _rebuild(entries, problems)
    seen = _read_notes(notes, known, regions_by_name, log_origin(trust_domain), problems, warnings)
    signed = _judge(seen, tree, min_cosigners, problems, warnings)
    results = [
        CheckpointResult(
            size=s.checkpoint.size,
            root=s.checkpoint.root_hash.hex(),
            signers=tuple(sorted(s.signers)),
            cosigners=tuple(sorted(s.cosigners - s.signers)),
            status=s.status,
        )
        for s in signed
    ]
    return VerifyReport(tree.size, tree.root(), results, problems, warnings)


def _rebuild(entries: Sequence[bytes], problems: list[str]) -> MerkleTree:
    """The tree of ``entries``; a problem for each entry that does not parse."""
    tree = MerkleTree()
    bad = 0
    for i, raw in enumerate(entries):
        data = _as_bytes(raw, f"entries[{i}]")
        tree.append(leaf_hash(data))
        try:
            AuditEntry.parse(data)
        except ValueError as exc:
            bad += 1
            if bad <= MAX_ENTRY_PROBLEMS:
                problems.append(f"entry {i} does not parse: {exc}")
    if bad > MAX_ENTRY_PROBLEMS:
        problems.append(f"... and {bad - MAX_ENTRY_PROBLEMS} more entries do not parse")
    return tree


def _read_notes(
    notes: Sequence[bytes],
    known: Mapping[KeyRef, tuple[str, Verifier]],
    regions_by_name: Mapping[str, str],
    origin: str,
    problems: list[str],
    warnings: list[str],
) -> dict[bytes, _Seen]:
    """The checkpoints in ``notes`` by body, with the regions whose signatures verified."""
    seen: dict[bytes, _Seen] = {}
    for i, raw in enumerate(notes):
        note = _as_bytes(raw, f"notes[{i}]")
        try:
            body, signatures = split_note(note)
        except ValueError as exc:
            problems.append(f"note {i} is malformed: {exc}")
            continue
        signers: set[str] = set()
        cosigners: set[str] = set()
        forged: list[str] = []
        for sig in signatures:
            entry = known.get(sig.ref)
            if entry is None:
                region = regions_by_name.get(sig.name)
                if region is not None:
                    warnings.append(
                        f"note {i}: a signature under {region}'s key name has key ID "
                        f"{sig.key_id:08x}, which is not {region}'s key: ignored"
                    )
                continue
            region, verifier = entry
            if not verifier.verify(body, sig.signature):
                what = "signature" if verifier.kind is SignatureType.ED25519 else "cosignature"
                forged.append(f"{what} by {region}")
            elif verifier.kind is SignatureType.ED25519:
                signers.add(region)
            else:
                cosigners.add(region)
        # The text is trusted only once a known signature verified; before
        # that it is parsed for the size in the messages alone.
        try:
            checkpoint: Checkpoint | None = Checkpoint.parse(body)
            error = ""
        except ValueError as exc:
            checkpoint, error = None, str(exc)
        where = f"note {i}" + (f" (checkpoint of size {checkpoint.size})" if checkpoint else "")
        problems.extend(
            f"{where}: the {what} does not verify: forged or altered" for what in forged
        )
        if not signers and not cosigners:
            if not forged:
                problems.append(f"{where}: has no signature by a known region key")
            continue
        if checkpoint is None:
            by = _names(signers | cosigners)
            problems.append(f"{where}: signed by {by} but is not a checkpoint: {error}")
            continue
        if checkpoint.origin != origin:
            problems.append(f"{where}: is for the log {checkpoint.origin[:80]!r}, not {origin!r}")
            continue
        s = seen.setdefault(body, _Seen(checkpoint))
        s.signers |= signers
        s.cosigners |= cosigners
    return seen


def _invalid(s: _Seen) -> None:
    s.status = CheckpointStatus.INVALID


def _judge(
    seen: Mapping[bytes, _Seen],
    tree: MerkleTree,
    min_cosigners: int,
    problems: list[str],
    warnings: list[str],
) -> list[_Seen]:
    """Check each signed checkpoint against the tree and the others; return
    them by size then root."""
    n = tree.size
    for s in seen.values():
        if not s.signers:
            cp = s.checkpoint
            problems.append(
                f"checkpoint of size {cp.size} (root {_short(cp.root_hash)}): cosigned by "
                f"{_names(s.cosigners)} but no region signed it"
            )
    signed = sorted(
        (s for s in seen.values() if s.signers),
        key=lambda s: (s.checkpoint.size, s.checkpoint.root_hash, s.checkpoint.extensions),
    )
    for s in signed:
        cp = s.checkpoint
        s.matches = cp.size <= n and tree.root_at(cp.size) == cp.root_hash
    newest = signed[-1].checkpoint.size if signed else None
    matching = sorted({s.checkpoint.size for s in signed if s.matches})

    for s in signed:
        cp = s.checkpoint
        if cp.size > n:
            problems.append(
                f"{s.label}: the log is shorter than a checkpoint ({n} entries): "
                "entries were removed"
            )
            _invalid(s)
        elif not s.matches:
            # The largest smaller checkpoint the entries do match bounds where
            # they part: it spares a reader searching the whole log.
            below = bisect.bisect_left(matching, cp.size)
            good = matching[below - 1] if below else 0
            problems.append(
                f"{s.label}: root {_short(cp.root_hash)} but the entries give "
                f"{_short(tree.root_at(cp.size))} (they differ within entries "
                f"{good}..{cp.size - 1})"
            )
            _invalid(s)
        # Regions that vouch for this tree: its signers and its cosigners (each
        # agent signs its own checkpoints too, so one body may have several
        # signers). It needs min_cosigners beyond the first.
        attesting = s.signers | s.cosigners
        if len(attesting) - 1 < min_cosigners:
            others = attesting - {min(s.signers)} if s.signers else attesting
            text = (
                f"{s.label}: cosigned by {len(others)} other region(s)"
                f"{' (' + _names(others) + ')' if others else ''}, needs {min_cosigners}"
            )
            if cp.size == newest:
                warnings.append(f"the newest {text}")
            else:
                problems.append(text)
            if s.status is CheckpointStatus.OK:
                s.status = CheckpointStatus.UNCOSIGNED

    by_size = {
        size: list(group) for size, group in itertools.groupby(signed, lambda s: s.checkpoint.size)
    }
    for size, group in by_size.items():
        roots: dict[bytes, set[str]] = {}
        for s in group:
            roots.setdefault(s.checkpoint.root_hash, set()).update(s.signers)
        if len(roots) > 1:
            sides = ", ".join(f"{_names(who)} signed {_short(r)}" for r, who in roots.items())
            problems.append(f"fork: different roots for size {size}: {sides}")
            for s in group:
                _invalid(s)

    sizes = [size for size in by_size if 0 < size <= n]
    for old, new in itertools.pairwise(sizes):
        proof = tree.consistency_proof(old, new)
        for b in by_size[new]:
            if not b.matches:
                continue
            for a in by_size[old]:
                cp_a, cp_b = a.checkpoint, b.checkpoint
                if not verify_consistency(old, new, cp_a.root_hash, cp_b.root_hash, proof):
                    problems.append(
                        f"{b.label} is not consistent with the {a.label}: "
                        f"history before size {old} was rewritten"
                    )
                    _invalid(a)

    if newest is None:
        if n:
            warnings.append(f"no signed checkpoint: nothing vouches for the {n} entries")
    elif n > newest:
        warnings.append(
            f"entries {newest}..{n - 1} ({n - newest}) are not covered by a checkpoint yet"
        )
    return signed


class InclusionProof(NamedTuple):
    """What :func:`prove` returns: check it with ``verify_inclusion(index,
    size, leaf_hash, hashes, root)`` against a signed checkpoint of ``size``."""

    leaf_hash: bytes
    size: int
    hashes: tuple[bytes, ...]


def prove(entries: Sequence[bytes], index: int, size: int | None = None) -> InclusionProof:
    """The inclusion proof of entry ``index`` in the tree of the first
    ``size`` entries (default: all), for a checkpoint of that size.

    Raises :class:`ValueError` unless ``0 <= index < size <= len(entries)``,
    or if an entry is not bytes.
    """
    tree = MerkleTree(leaf_hash(_as_bytes(e, f"entries[{i}]")) for i, e in enumerate(entries))
    if size is None:
        size = tree.size
    hashes = tree.inclusion_proof(index, size)
    return InclusionProof(tree.leaf_hash(index), size, tuple(hashes))


def format_proof(index: int, proof: InclusionProof, root: bytes) -> str:
    """``proof`` of entry ``index`` as text, one ``key=value`` line each:
    ``index``, ``size``, ``leaf_hash``, ``root_hash``, then one ``node_hash``
    per proof hash from the leaf up; hashes in lowercase hex."""
    lines = [
        f"index={index}",
        f"size={proof.size}",
        f"leaf_hash={proof.leaf_hash.hex()}",
        f"root_hash={bytes(root).hex()}",
        *(f"node_hash={h.hex()}" for h in proof.hashes),
    ]
    return "".join(line + "\n" for line in lines)


def entry_index(entries: Sequence[bytes], request_id: str) -> int | None:
    """The index of the first entry that parses and has ``request_id``, or
    None. Entries that do not parse are skipped.

    Raises :class:`ValueError` if ``request_id`` is not a string.
    """
    if not isinstance(request_id, str):
        raise ValueError(f"request_id: must be a string, got {type(request_id).__name__}")
    try:
        raw = request_id.encode()
    except UnicodeEncodeError:
        return None  # no entry can hold a lone surrogate
    # Parsing every entry is the cost; an ID that JSON does not escape is
    # verbatim in its entry's bytes, so only entries holding it are parsed.
    needle = None if _JSON_ESCAPED.search(request_id) else b'"' + raw + b'"'
    for i, raw_entry in enumerate(entries):
        data = _as_bytes(raw_entry, f"entries[{i}]")
        if needle is not None and needle not in data:
            continue
        try:
            entry = AuditEntry.parse(data)
        except ValueError:
            continue
        if entry.request_id == request_id:
            return i
    return None
