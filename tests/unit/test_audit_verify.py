"""audit.verify: a whole log checked against the checkpoints three regions signed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian.audit import (
    MAX_NOTE_BYTES,
    AuditEntry,
    Checkpoint,
    CheckpointStatus,
    NoteSignature,
    SignatureType,
    SignedCheckpoint,
    VerifyReport,
    cosign,
    entry_index,
    format_proof,
    key_name,
    leaf_hash,
    log_origin,
    prove,
    region_verifiers,
    root,
    sign_note,
    verify_inclusion,
    verify_log,
)
from meridian.core.hlc import HlcTimestamp

TD = "meridian.local"
ORIGIN = "meridian.local/audit"
REGIONS = ("us-east", "eu-west", "ap-south")
TIME = 1_700_000_000


def entry(i: int, *, tag: str = "") -> AuditEntry:
    return AuditEntry(
        request_id=f"req-{i:03d}{tag}",
        principal="spiffe://meridian.local/svc/api",
        action="state:write",
        resource=f"kv/orders/{i}",
        decision="permit" if i % 3 else "deny",
        region=REGIONS[i % 3],
        hlc=HlcTimestamp(1_700_000_000_000 + i, 0).encode(),
        detail={"method": "PUT"},
    )


def checkpoint_of(entries: list[bytes], size: int) -> Checkpoint:
    return Checkpoint(ORIGIN, size, root([leaf_hash(e) for e in entries[:size]]))


@dataclass
class Log:
    """A log of 40 entries with checkpoints at 10 (us-east), 25 (eu-west) and
    40 (ap-south), each cosigned by the other two regions in its own note."""

    entries: list[bytes] = field(default_factory=lambda: [entry(i).canonical() for i in range(40)])
    private: dict[str, Ed25519PrivateKey] = field(
        default_factory=lambda: {r: Ed25519PrivateKey.generate() for r in REGIONS}
    )
    notes: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        for size, signer in ((10, "us-east"), (25, "eu-west"), (40, "ap-south")):
            self.publish(checkpoint_of(self.entries, size), signer)

    @property
    def keys(self) -> dict[str, Ed25519PublicKey]:
        return {r: k.public_key() for r, k in self.private.items()}

    def signed(self, cp: Checkpoint, region: str) -> bytes:
        return SignedCheckpoint.sign(cp, key_name(region, TD), self.private[region]).format()

    def cosigned(self, cp: Checkpoint, region: str) -> bytes:
        sig = cosign(cp, key_name(region, TD), self.private[region], TIME)
        return SignedCheckpoint(cp, (sig,)).format()

    def publish(
        self, cp: Checkpoint, signer: str, cosigners: tuple[str, ...] | None = None
    ) -> None:
        if cosigners is None:
            cosigners = tuple(r for r in REGIONS if r != signer)
        self.notes.append(self.signed(cp, signer))
        self.notes += [self.cosigned(cp, r) for r in cosigners]

    def verify(self, **kwargs: int) -> VerifyReport:
        return verify_log(self.entries, self.notes, self.keys, trust_domain=TD, **kwargs)


def failed(report: VerifyReport, *words: str) -> str:
    """The problem naming every one of ``words`` (the report must not be ok)."""
    assert not report.ok
    hits = [p for p in report.problems if all(w in p for w in words)]
    assert hits, f"no problem names {words}: {report.problems}"
    return hits[0]


def status(report: VerifyReport, size: int) -> CheckpointStatus:
    (result,) = [c for c in report.checkpoints if c.size == size]
    return result.status


# --- a good log ---------------------------------------------------------------


def test_a_good_log_verifies() -> None:
    log = Log()
    report = log.verify(min_cosigners=2)
    assert report.ok and report.problems == [] and report.warnings == []
    assert report.size == 40
    assert report.root == root([leaf_hash(e) for e in log.entries])
    assert [(c.size, c.signers, c.cosigners, c.status) for c in report.checkpoints] == [
        (10, ("us-east",), ("ap-south", "eu-west"), CheckpointStatus.OK),
        (25, ("eu-west",), ("ap-south", "us-east"), CheckpointStatus.OK),
        (40, ("ap-south",), ("eu-west", "us-east"), CheckpointStatus.OK),
    ]
    assert report.checkpoints[-1].root == report.root.hex()


def test_one_note_may_carry_the_signature_and_every_cosignature() -> None:
    log = Log()
    cp = checkpoint_of(log.entries, 40)
    note = SignedCheckpoint.sign(cp, key_name("us-east", TD), log.private["us-east"])
    for r in ("eu-west", "ap-south"):
        note = note.with_signature(cosign(cp, key_name(r, TD), log.private[r], TIME))
    log.notes = [note.format()]
    report = log.verify(min_cosigners=2)
    assert report.ok and report.warnings == []
    assert report.checkpoints[0].cosigners == ("ap-south", "eu-west")


def test_a_signature_by_an_unknown_key_is_ignored() -> None:
    log = Log()
    cp = checkpoint_of(log.entries, 40)
    outsider = Ed25519PrivateKey.generate()
    witness = cosign(cp, "witness.example.com", outsider, TIME)
    log.notes.append(
        SignedCheckpoint.sign(cp, "us-east.audit.meridian.local", log.private["us-east"])
        .with_signature(witness)
        .format()
    )
    assert log.verify().ok


def test_entries_after_the_last_checkpoint_are_a_warning() -> None:
    log = Log()
    log.entries += [entry(i).canonical() for i in range(40, 44)]
    report = log.verify()
    assert report.ok
    assert report.warnings == ["entries 40..43 (4) are not covered by a checkpoint yet"]


# --- tampered entries ---------------------------------------------------------


def test_a_changed_entry_fails() -> None:
    log = Log()
    changed = dataclasses.replace(entry(17), resource="kv/orders/18")  # one byte
    assert changed.canonical() != log.entries[17]
    log.entries[17] = changed.canonical()
    report = log.verify()
    assert not any("does not parse" in p for p in report.problems)
    assert "differ within entries 10..24" in failed(report, "size 25", "root", "entries give")
    failed(report, "size 40", "entries give")
    assert [c.status for c in report.checkpoints] == [
        CheckpointStatus.OK,
        CheckpointStatus.INVALID,
        CheckpointStatus.INVALID,
    ]


def test_an_entry_that_does_not_parse_fails() -> None:
    log = Log()
    log.entries[3] = log.entries[3].replace(b'"decision":"deny"', b'"decision":"maybe"')
    failed(log.verify(), "entry 3 does not parse", "decision")


def test_a_removed_entry_fails() -> None:
    log = Log()
    del log.entries[5]
    report = log.verify()
    failed(report, "size 40", "the log is shorter than a checkpoint", "entries were removed")
    failed(report, "size 10", "differ within entries 0..9")
    assert status(report, 40) is CheckpointStatus.INVALID


def test_reordered_entries_fail() -> None:
    log = Log()
    log.entries[12], log.entries[13] = log.entries[13], log.entries[12]
    report = log.verify()
    failed(report, "size 25", "differ within entries 10..24")
    assert status(report, 10) is CheckpointStatus.OK


def test_an_inserted_entry_fails() -> None:
    log = Log()
    log.entries.insert(30, entry(99).canonical())
    report = log.verify()
    failed(report, "size 40", "differ within entries 25..39")
    assert status(report, 25) is CheckpointStatus.OK


def test_a_log_shorter_than_a_checkpoint_fails() -> None:
    log = Log()
    log.entries = log.entries[:38]
    report = log.verify()
    assert failed(report, "size 40").startswith(
        "checkpoint of size 40 signed by ap-south: the log is shorter than a checkpoint "
        "(38 entries): entries were removed"
    )
    # What the log still has matches the older checkpoints.
    assert [status(report, s) for s in (10, 25)] == [CheckpointStatus.OK] * 2


# --- forged and inconsistent checkpoints ----------------------------------------


def test_a_checkpoint_signed_by_another_key_under_the_region_name_fails() -> None:
    log = Log()
    forger = Ed25519PrivateKey.generate()
    bogus = checkpoint_of([entry(i, tag="x").canonical() for i in range(45)], 45)
    # Its own key ID: signed-note ignores the line, so nothing vouches for the note.
    log.notes.append(SignedCheckpoint.sign(bogus, key_name("us-east", TD), forger).format())
    report = log.verify()
    failed(report, "note 9 (checkpoint of size 45)", "no signature by a known region key")
    assert any("us-east's key name" in w for w in report.warnings)
    assert [c.size for c in report.checkpoints] == [10, 25, 40]
    # us-east's key ID on the forger's signature: the known key's check fails.
    real = sign_note(bogus.body(), key_name("us-east", TD), log.private["us-east"])
    fake = sign_note(bogus.body(), key_name("us-east", TD), forger)
    log.notes[-1] = SignedCheckpoint(
        bogus, (NoteSignature(real.name, real.key_id, fake.signature),)
    ).format()
    assert failed(log.verify(), "note 9") == (
        "note 9 (checkpoint of size 45): the signature by us-east does not verify: "
        "forged or altered"
    )


def test_an_altered_signature_line_fails() -> None:
    log = Log()
    note = bytearray(log.notes[3])  # eu-west's own signature on size 25
    note[-10] = ord("A") if note[-10] != ord("A") else ord("B")
    log.notes[3] = bytes(note)
    report = log.verify()
    failed(report, "note 3 (checkpoint of size 25)", "signature by eu-west does not verify")
    # With its signature gone, the cosignatures of size 25 vouch for a body nobody signed.
    failed(report, "checkpoint of size 25", "no region signed it")
    # An altered cosignature too.
    log = Log()
    note = bytearray(log.notes[1])
    note[-10] = ord("A") if note[-10] != ord("A") else ord("B")
    log.notes[1] = bytes(note)
    failed(log.verify(), "note 1 (checkpoint of size 10)", "cosignature by eu-west does not verify")


def test_an_altered_checkpoint_body_fails() -> None:
    log = Log()
    # Same signature line on another size: the body no longer matches it.
    log.notes[0] = log.notes[0].replace(b"\n10\n", b"\n11\n", 1)
    failed(log.verify(), "note 0 (checkpoint of size 11)", "signature by us-east does not verify")


def test_a_fork_fails() -> None:
    log = Log()
    other = [entry(i, tag="-b").canonical() for i in range(40)]
    log.publish(checkpoint_of(other, 40), "eu-west", cosigners=())
    report = log.verify()
    problem = failed(report, "fork")
    assert "size 40" in problem and "ap-south signed" in problem and "eu-west signed" in problem
    assert [c.status for c in report.checkpoints if c.size == 40] == [CheckpointStatus.INVALID] * 2
    failed(report, "size 40 signed by eu-west", "entries give")


def test_a_checkpoint_inconsistent_with_a_later_one_fails() -> None:
    log = Log()
    # us-east signed size 10 over another history, and the others cosigned it:
    # the later checkpoints, which match the entries, show it was rewritten.
    other = [entry(i, tag="-old").canonical() for i in range(10)]
    log.notes = log.notes[3:]
    log.publish(checkpoint_of(other, 10), "us-east")
    report = log.verify()
    assert failed(report, "not consistent") == (
        "checkpoint of size 25 signed by eu-west is not consistent with the checkpoint of "
        "size 10 signed by us-east: history before size 10 was rewritten"
    )
    assert status(report, 10) is CheckpointStatus.INVALID
    assert status(report, 25) is CheckpointStatus.OK


def test_a_stale_checkpoint_never_cosigned_fails() -> None:
    log = Log()
    log.notes = [log.notes[0], *log.notes[3:]]  # size 10 lost its cosignatures
    report = log.verify()
    assert failed(report, "size 10") == (
        "checkpoint of size 10 signed by us-east: cosigned by 0 other region(s), needs 1"
    )
    assert status(report, 10) is CheckpointStatus.UNCOSIGNED
    # With one cosignature of two required, still a problem.
    log = Log()
    del log.notes[2]
    failed(
        log.verify(min_cosigners=2), "size 10", "cosigned by 1 other region(s) (eu-west), needs 2"
    )


def test_the_newest_checkpoint_without_cosignatures_is_only_a_warning() -> None:
    log = Log()
    log.notes = log.notes[:-2]  # size 40, signed, not yet cosigned
    report = log.verify()
    assert report.ok
    assert report.warnings == [
        "the newest checkpoint of size 40 signed by ap-south: "
        "cosigned by 0 other region(s), needs 1"
    ]
    assert status(report, 40) is CheckpointStatus.UNCOSIGNED
    assert log.verify(min_cosigners=0).warnings == []


def test_a_cosignature_by_the_signer_does_not_count() -> None:
    log = Log()
    log.notes = [log.notes[0], *log.notes[3:]]
    log.notes.append(log.cosigned(checkpoint_of(log.entries, 10), "us-east"))
    report = log.verify()
    failed(report, "size 10 signed by us-east", "cosigned by 0 other region(s)")
    assert report.checkpoints[0].cosigners == ()


def test_cosignatures_of_a_checkpoint_nobody_signed_fail() -> None:
    log = Log()
    cp = checkpoint_of(log.entries, 30)
    log.notes += [log.cosigned(cp, "eu-west"), log.cosigned(cp, "us-east")]
    report = log.verify()
    assert failed(report, "size 30") == (
        f"checkpoint of size 30 (root {cp.root_hash.hex()[:16]}..): cosigned by eu-west, "
        "us-east but no region signed it"
    )
    assert 30 not in [c.size for c in report.checkpoints]


def test_a_checkpoint_of_another_log_fails() -> None:
    log = Log()
    cp = dataclasses.replace(checkpoint_of(log.entries, 40), origin="elsewhere.example/audit")
    log.notes.append(log.signed(cp, "us-east"))
    failed(log.verify(), "note 9", "'elsewhere.example/audit', not 'meridian.local/audit'")


# --- hostile notes ------------------------------------------------------------


def test_malformed_notes_are_problems_not_exceptions() -> None:
    log = Log()
    good = log.notes[0]
    log.notes += [
        b"\x00\xff garbage \x13\x37",
        b"",
        b"x" * (MAX_NOTE_BYTES + 1),
        good.replace(b"\xe2\x80\x94 ", b"- "),  # no em dash
        good[: good.rindex(b" ") + 1] + b"!!not base64!!\n",
        good + b"\xe2\x80\x94 " * 200 + b"\n",
        good[: good.index(b"\n\n")] + b"\n\n" + good[good.index(b"\n\n") + 2 :] * 101,
    ]
    report = log.verify()
    for i in range(9, 16):
        failed(report, f"note {i} is malformed")
    assert len(report.problems) == 7
    assert [c.status for c in report.checkpoints] == [CheckpointStatus.OK] * 3


def test_a_signed_note_that_is_not_a_checkpoint_fails() -> None:
    log = Log()
    text = b"hello\n"
    log.notes.append(
        text + b"\n" + sign_note(text, key_name("us-east", TD), log.private["us-east"]).line()
    )
    failed(log.verify(), "note 9: signed by us-east but is not a checkpoint", "at least 3 lines")


#: One log for every example: the hostile notes are appended to its good ones.
LOG_FOR_JUNK = Log()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
            st.sampled_from(
                [b"a\n1\nAAAA\n\n\xe2\x80\x94 k AAAAAAAA\n", b"\n\n", b"\n\n\xe2\x80\x94 \n"]
            ),
        ),
        max_size=4,
    )
)
def test_no_note_makes_the_verifier_raise(junk: list[bytes]) -> None:
    log = LOG_FOR_JUNK
    report = verify_log(log.entries, log.notes + junk, log.keys, trust_domain=TD)
    assert len(report.problems) <= len(junk)


def test_bad_arguments_raise() -> None:
    log = Log()
    with pytest.raises(ValueError, match="min_cosigners"):
        log.verify(min_cosigners=-1)
    with pytest.raises(ValueError, match="region"):
        verify_log([], [], {"Not A Region": log.keys["us-east"]}, trust_domain=TD)
    with pytest.raises(ValueError, match=r"entries\[0\]"):
        verify_log(["text"], [], log.keys, trust_domain=TD)  # type: ignore[list-item]


def test_an_empty_log_with_no_notes_is_ok() -> None:
    report = verify_log([], [], {}, trust_domain=TD)
    assert report.ok and report.size == 0 and report.checkpoints == [] and report.warnings == []
    report = verify_log([entry(0).canonical()], [], {}, trust_domain=TD)
    assert report.ok and report.warnings == [
        "no signed checkpoint: nothing vouches for the 1 entries"
    ]


# --- keys, proofs, lookups ------------------------------------------------------


def test_region_verifiers_share_the_key_under_two_ids() -> None:
    key = Ed25519PrivateKey.generate()
    signer, cosigner = region_verifiers("us-east", TD, key.public_key())
    assert signer.name == cosigner.name == key_name("us-east", TD) == "us-east.audit.meridian.local"
    assert (signer.kind, cosigner.kind) == (SignatureType.ED25519, SignatureType.COSIGNATURE_V1)
    assert signer.public_key == cosigner.public_key and signer.key_id != cosigner.key_id
    assert log_origin(TD) == ORIGIN
    with pytest.raises(ValueError, match="region"):
        region_verifiers("us.east", TD, key.public_key())


def test_prove_round_trips_with_verify_inclusion() -> None:
    log = Log()
    report = log.verify()
    for cp in report.checkpoints:
        for index in range(cp.size):
            proof = prove(log.entries, index, cp.size)
            assert proof.leaf_hash == leaf_hash(log.entries[index]) and proof.size == cp.size
            assert verify_inclusion(
                index, cp.size, proof.leaf_hash, proof.hashes, bytes.fromhex(cp.root)
            )
            assert not verify_inclusion(
                index, cp.size, leaf_hash(b"x"), proof.hashes, bytes.fromhex(cp.root)
            )
    leaf, size, hashes = prove(log.entries, 17)
    assert size == 40 and verify_inclusion(17, 40, leaf, hashes, report.root)
    text = format_proof(17, prove(log.entries, 17), report.root)
    lines = text.splitlines()
    assert lines[:4] == [
        "index=17",
        "size=40",
        f"leaf_hash={leaf.hex()}",
        f"root_hash={report.root.hex()}",
    ]
    assert lines[4:] == [f"node_hash={h.hex()}" for h in hashes] and text.endswith("\n")
    for index, size_ in ((40, None), (-1, None), (5, 41), (5, 5)):
        with pytest.raises(ValueError):
            prove(log.entries, index, size_)


def test_entry_index_finds_an_entry_by_request_id() -> None:
    log = Log()
    assert entry_index(log.entries, "req-017") == 17
    assert entry_index(log.entries, "req-999") is None
    assert entry_index(log.entries, "req-01") is None  # no prefix matches
    odd = dataclasses.replace(entry(40), request_id='we"ird\\id\n')
    entries = [b"not json", *log.entries, odd.canonical(), odd.canonical()]
    assert entry_index(entries, 'we"ird\\id\n') == 41
    assert entry_index(entries, "\ud800") is None
