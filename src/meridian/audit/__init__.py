"""Tamper-evident audit log: the pure core (no I/O).

Every audited decision is an :class:`AuditEntry`; its RFC 8785 canonical
JSON is a leaf of an append-only RFC 9162 Merkle tree (:mod:`.merkle`). The
log publishes the tree's size and root as a C2SP checkpoint, a signed note
that witnesses cosign (:mod:`.checkpoint`). Anyone holding the entries can
rebuild the tree, check that an entry is in it (inclusion proof) and that a
newer checkpoint extends an older one (consistency proof), so an entry can't
be changed, dropped or reordered without the signatures or the proofs
failing. Storage and transport live elsewhere; this package only computes.
"""

from meridian.audit.checkpoint import (
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    Checkpoint,
    NoteSignature,
    OpenedCheckpoint,
    SignatureType,
    SignedCheckpoint,
    UnverifiedNoteError,
    VerifiedNote,
    VerifiedSignature,
    Verifier,
    cosign,
    key_id,
    open_note,
    sign_note,
    verifier_map,
    verify_note,
)
from meridian.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from meridian.audit.model import MAX_ENTRY_BYTES, MAX_STRING_CHARS, AuditEntry
from meridian.audit.verify import (
    CheckpointResult,
    CheckpointStatus,
    InclusionProof,
    RegionVerifiers,
    VerifyReport,
    entry_index,
    format_proof,
    key_name,
    log_origin,
    prove,
    region_verifiers,
    verify_log,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_ENTRY_BYTES",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "MAX_STRING_CHARS",
    "AuditEntry",
    "Checkpoint",
    "CheckpointResult",
    "CheckpointStatus",
    "InclusionProof",
    "MerkleTree",
    "NoteSignature",
    "OpenedCheckpoint",
    "RegionVerifiers",
    "SignatureType",
    "SignedCheckpoint",
    "UnverifiedNoteError",
    "VerifiedNote",
    "VerifiedSignature",
    "Verifier",
    "VerifyReport",
    "consistency_proof",
    "cosign",
    "entry_index",
    "format_proof",
    "inclusion_proof",
    "key_id",
    "key_name",
    "leaf_hash",
    "log_origin",
    "node_hash",
    "open_note",
    "prove",
    "region_verifiers",
    "root",
    "sign_note",
    "verifier_map",
    "verify_consistency",
    "verify_inclusion",
    "verify_log",
    "verify_note",
]
