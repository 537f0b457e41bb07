"""audit.checkpoint: C2SP checkpoints, signed notes and cosignatures."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from meridian.audit.checkpoint import (
    MAX_NOTE_BYTES,
    Checkpoint,
    NoteSignature,
    SignatureType,
    SignedCheckpoint,
    UnverifiedNoteError,
    Verifier,
    cosign,
    key_id,
    open_note,
    sign_note,
    verifier_map,
    verify_note,
)
from meridian.audit.merkle import leaf_hash, root

# --- known answers ------------------------------------------------------------

# golang.org/x/mod, sumdb/note/note_test.go (TestSign, TestOpen, TestNewVerifier):
# a signer key, its verifier key, a second verifier key, and their signatures
# of one text. Ed25519 is deterministic, so signing the text again must give
# the published signature byte for byte.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
PETER_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
).encode()
ENOCH_SIG = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
).encode()

# c2sp.org/signed-note, "Verifier keys", Example: a vkey and the note it verifies.
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n"
    "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
).encode()

# c2sp.org/tlog-checkpoint (example) and c2sp.org/tlog-cosignature (example):
# a checkpoint signed by its log and cosigned by a witness. The spec publishes
# no keys for them, so only the framing can be checked.
SPEC_BODY = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_COSIGNED = (
    SPEC_BODY
    + (
        "\n\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
        "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
    ).encode()
)

# transparency-dev/formats, note/note_cosigv1_test.go (TestCoSigV1NewVerifier,
# TestCoSigV1Timestamp): a native cosignature/v1 (0x04) vkey, an Ed25519 vkey
# whose base64 holds a '+', and a cosignature made at 1727964367.
REMORA_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
PLUS_VKEY = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"
TIMESTAMPED_SIG = "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA=="


def peter_key() -> Ed25519PrivateKey:
    raw = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert raw[0] == SignatureType.ED25519
    return Ed25519PrivateKey.from_private_bytes(raw[1:])


def test_signing_the_go_text_gives_the_published_signature() -> None:
    sig = sign_note(GO_TEXT, "PeterNeumann", peter_key())
    assert sig.line() == PETER_SIG
    assert f"{sig.key_id:08x}" == "c74f20a3"
    assert Verifier.from_public_key("PeterNeumann", peter_key().public_key()).format() == PETER_VKEY


def test_the_go_note_opens_with_one_or_both_keys() -> None:
    peter, enoch = Verifier.parse(PETER_VKEY), Verifier.parse(ENOCH_VKEY)
    msg = GO_TEXT + b"\n" + PETER_SIG + ENOCH_SIG
    note = verify_note(msg, {}, required=peter)
    assert note.text == GO_TEXT
    assert [v.verifier for v in note.verified] == [peter]
    assert note.unknown == 1
    note = verify_note(msg, verifier_map([peter, enoch]), required=enoch)
    assert [v.verifier.name for v in note.signers] == ["PeterNeumann", "EnochRoot"]
    assert note.unknown == 0 and note.cosigners == ()
    # Neither key known: nothing trusted signed it.
    with pytest.raises(UnverifiedNoteError, match="no verified signature by the required key"):
        verify_note(msg, {}, required=Verifier.from_public_key("x", b"\x01" * 32))
    # Repeated lines, verified or not, count once (golang.org/x/mod TestOpen).
    note = verify_note(GO_TEXT + b"\n" + PETER_SIG * 2 + ENOCH_SIG * 2, {}, required=peter)
    assert len(note.verified) == 1 and note.unknown == 2 and len(note.signatures) == 4


def test_the_go_hostile_notes_are_refused() -> None:
    peter = Verifier.parse(PETER_VKEY)
    # golang.org/x/mod TestOpen: 101 signatures, a corrupted signature, bad syntax.
    with pytest.raises(ValueError, match="at most 100 signature lines"):
        verify_note(GO_TEXT + b"\n" + PETER_SIG * 101, {}, required=peter)
    corrupt = PETER_SIG[:60] + b"ABCD" + PETER_SIG[60:]
    with pytest.raises(UnverifiedNoteError, match=r"known key PeterNeumann\+c74f20a3"):
        verify_note(GO_TEXT + b"\n" + corrupt, {}, required=peter)
    bad = [
        (GO_TEXT, "blank line"),
        (GO_TEXT + b"\n", "at least one signature line"),
        (GO_TEXT + b"\n" + PETER_SIG[:-1], "must end with a newline"),
        (b"\x01" + GO_TEXT + b"\n" + PETER_SIG, "control characters"),
        (b"\xff" + GO_TEXT + b"\n" + PETER_SIG, "must be UTF-8"),
        (GO_TEXT + b"\n" + PETER_SIG.replace(b"PeterNeumann", b"Bad Name"), "signature line 1"),
        (GO_TEXT + b"\n" + PETER_SIG + b"Unexpected line.\n", "signature line 2: must start with"),
    ]
    for msg, rule in bad:
        with pytest.raises(ValueError, match=rule) as info:
            verify_note(msg, {}, required=peter)
        assert not isinstance(info.value, UnverifiedNoteError)


def test_the_signed_note_spec_example_verifies() -> None:
    v = Verifier.parse(SPEC_VKEY)
    assert (v.name, v.key_id, v.kind) == ("example.com/foo", 0x530D903A, SignatureType.ED25519)
    note = verify_note(SPEC_NOTE, {}, required=v)
    assert note.text == b"This is an example message.\n"
    with pytest.raises(ValueError, match="at least 3 lines"):
        open_note(SPEC_NOTE, {}, required=v)  # verified, but not a checkpoint


def test_the_checkpoint_and_cosignature_spec_examples_parse() -> None:
    cp = Checkpoint.parse(SPEC_BODY)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.body() == SPEC_BODY
    witness_line = SPEC_COSIGNED.decode().splitlines()[-1]
    sig = NoteSignature.parse_line(witness_line)
    assert sig.name == "witness.example.com/w1" and sig.key_id == 0x8D66CF3F
    # timestamp(8) || Ed25519(64); the spec's signed-message example says "time 1679315147".
    assert len(sig.signature) == 72 and int.from_bytes(sig.signature[:8]) == 1679315147
    assert sig.line().decode() == witness_line + "\n"
    unknown = Verifier.from_public_key("example.com/behind-the-sofa", b"\x02" * 32)
    with pytest.raises(UnverifiedNoteError, match="no verified signature"):
        open_note(SPEC_COSIGNED, {}, required=unknown)  # its keys are unknown: ignored


def test_the_formats_vkeys_parse_and_round_trip() -> None:
    remora = Verifier.parse(REMORA_VKEY)
    assert remora.kind is SignatureType.COSIGNATURE_V1 and remora.key_id == 0xDA77ADE7
    plus = Verifier.parse(PLUS_VKEY)
    assert plus.kind is SignatureType.ED25519 and plus.name == "TEST"
    for vkey in (REMORA_VKEY, PLUS_VKEY, PETER_VKEY, ENOCH_VKEY, SPEC_VKEY):
        assert Verifier.parse(vkey).format() == str(Verifier.parse(vkey)) == vkey
    sig = NoteSignature.parse_line(f"\u2014 w {TIMESTAMPED_SIG}")
    assert int.from_bytes(sig.signature[:8]) == 1727964367


@pytest.mark.parametrize(
    ("vkey", "rule"),
    [
        # transparency-dev/formats TestCoSigV1NewVerifier failures.
        ("bananas.sigstore.dev+12344556", "must be '<name>+<hex key ID>"),
        ("rekor.sigstore.dev+12345678+THIS_IS_NOT_BASE64!", "canonical base64"),
        ("rekor.sigstore.dev+12345678+AwEB", "unsupported signature type 0x03"),
        # golang.org/x/mod TestNewVerifier: wrong key length, unknown type.
        (
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
            "vkey key: must be canonical base64",  # "Y==" leaves bits set
        ),
        ("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "type 0x65"),
        (PETER_VKEY.replace("c74f20a3", "C74F20A3"), "8 lowercase hex"),
        (PETER_VKEY.replace("c74f20a3", "c74f20a4"), "does not match"),
        (PETER_VKEY.replace("PeterNeumann", "Peter Neumann"), "spaces"),
        ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "non-empty"),
        ("x+00000000+" + "A" * 2000, "at most 1024"),
        ("x+00000000+" + base64.b64encode(b"\x01" + bytes(31)).decode(), "must be 32 bytes"),
    ],
)
def test_malformed_vkeys_are_refused(vkey: str, rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(rule)):
        Verifier.parse(vkey)


def test_every_mangling_of_a_vkey_is_refused() -> None:
    # golang.org/x/mod TestNewVerifier: every proper substring, every byte + 1.
    for i in range(len(PETER_VKEY) + 1):
        for j in range(i + 1, len(PETER_VKEY) + 1):
            if (i, j) != (0, len(PETER_VKEY)):
                with pytest.raises(ValueError):
                    Verifier.parse(PETER_VKEY[i:j])
    for i in range(len(PETER_VKEY)):
        with pytest.raises(ValueError):
            Verifier.parse(PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1 :])


# --- a log and its witnesses ----------------------------------------------------

LOG = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
W1 = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
W2 = Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)
STRANGER = Ed25519PrivateKey.from_private_bytes(bytes([4]) * 32)
ORIGIN = "meridian.example/audit/us-east"
LOG_V = Verifier.from_public_key(ORIGIN, LOG.public_key())
W1_V = Verifier.from_public_key("w1.example", W1.public_key(), SignatureType.COSIGNATURE_V1)
W2_V = Verifier.from_public_key("w2.example", W2.public_key(), SignatureType.COSIGNATURE_V1)
KNOWN = verifier_map([LOG_V, W1_V, W2_V])
CP = Checkpoint(ORIGIN, 3, root([leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")]))


def cosigned(cp: Checkpoint = CP) -> SignedCheckpoint:
    note = SignedCheckpoint.sign(cp, ORIGIN, LOG)
    note = note.with_signature(cosign(cp, "w1.example", W1, 1_700_000_000))
    return note.with_signature(cosign(cp, "w2.example", W2, 1_700_000_005))


def test_a_checkpoint_signed_and_cosigned_twice_opens() -> None:
    text = cosigned().format()
    assert text.startswith(CP.body() + "\n\u2014 ".encode())
    opened = open_note(text, KNOWN, required=LOG_V)
    assert opened.checkpoint == CP
    assert [v.verifier for v in opened.signers] == [LOG_V]
    assert [(v.verifier.name, v.timestamp) for v in opened.cosigners] == [
        ("w1.example", 1_700_000_000),
        ("w2.example", 1_700_000_005),
    ]
    assert opened.unknown == 0
    assert opened.signed == cosigned() and opened.signed.format() == text
    # The witnesses are only counted if known; the log's key is enough to open.
    assert open_note(text, {}, required=LOG_V).unknown == 2


def test_a_cosignature_signs_the_spec_message() -> None:
    sig = cosign(CP, "w1.example", W1, 1679315147)
    assert sig.key_id == key_id("w1.example", SignatureType.COSIGNATURE_V1, W1_V.public_key)
    assert sig.signature[:8] == (1679315147).to_bytes(8, "big")
    message = b"cosignature/v1\ntime 1679315147\n" + CP.body()
    W1.public_key().verify(sig.signature[8:], message)  # raises if not
    # Not a plain Ed25519 signature: the same key as type 0x01 has another ID.
    assert key_id("w1.example", SignatureType.ED25519, W1_V.public_key) != sig.key_id


def resigned_body(body: bytes) -> bytes:
    """``cosigned()``'s signature lines under another body."""
    return body + b"\n" + cosigned().format().split(b"\n\n", 1)[1]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda b: b.replace(b"\n3\n", b"\n4\n"), id="size"),
        pytest.param(
            lambda b: b.replace(base64.b64encode(CP.root_hash), base64.b64encode(bytes(32))),
            id="root",
        ),
        pytest.param(lambda b: b.replace(b"us-east", b"us-west"), id="origin"),
        pytest.param(lambda b: b + b"extension\n", id="extension"),
    ],
)
def test_a_changed_checkpoint_fails_its_signatures(change: Callable[[bytes], bytes]) -> None:
    body = change(CP.body())
    assert body != CP.body() and Checkpoint.parse(body)
    with pytest.raises(UnverifiedNoteError, match="does not verify"):
        open_note(resigned_body(body), KNOWN, required=LOG_V)


def test_forged_and_missing_signatures_are_refused() -> None:
    good = cosigned()
    log_sig = good.signatures[0]
    forged = NoteSignature(log_sig.name, log_sig.key_id, bytes(64))
    with pytest.raises(UnverifiedNoteError, match=r"known key meridian\.example"):
        open_note(
            SignedCheckpoint(CP, (forged, *good.signatures[1:])).format(), KNOWN, required=LOG_V
        )
    # A known witness's forged line fails the whole note, the log's signature notwithstanding.
    bad_w = NoteSignature("w1.example", W1_V.key_id, bytes(8) + bytes(64))
    with pytest.raises(UnverifiedNoteError, match=r"w1\.example"):
        open_note(good.with_signature(bad_w).format(), KNOWN, required=LOG_V)
    # A cosignature time past 2^63 - 1 is no cosignature, even if validly signed.
    stamp = (1 << 64) - 1
    signed = W1.sign(b"cosignature/v1\ntime %d\n" % stamp + CP.body())
    late = NoteSignature("w1.example", W1_V.key_id, stamp.to_bytes(8, "big") + signed)
    with pytest.raises(UnverifiedNoteError):
        open_note(
            SignedCheckpoint.sign(CP, ORIGIN, LOG).with_signature(late).format(),
            KNOWN,
            required=LOG_V,
        )
    # Signed only by a stranger: unknown, so ignored, so nothing verified.
    stranger = SignedCheckpoint.sign(CP, "stranger.example", STRANGER).format()
    with pytest.raises(UnverifiedNoteError, match="no verified signature by the required key"):
        open_note(stranger, KNOWN, required=LOG_V)
    # A stranger under the log's name, or under its key ID, is not the log.
    for name, kid in [(ORIGIN, LOG_V.key_id ^ 1), ("impostor", LOG_V.key_id)]:
        alias = NoteSignature(name, kid, sign_note(CP.body(), ORIGIN, STRANGER).signature)
        with pytest.raises(UnverifiedNoteError, match="no verified signature"):
            open_note(SignedCheckpoint(CP, (alias,)).format(), KNOWN, required=LOG_V)
    # Signed by a witness only: the log's signature is required.
    only_w = SignedCheckpoint(CP, (cosign(CP, "w1.example", W1, 5),)).format()
    with pytest.raises(UnverifiedNoteError, match="required key"):
        open_note(only_w, KNOWN, required=LOG_V)


def test_truncated_notes_are_refused() -> None:
    text = cosigned().format()
    opened = []
    for cut in range(len(text)):
        try:
            opened.append(open_note(text[:cut], KNOWN, required=LOG_V))
        except ValueError:
            continue
    # Only cuts that drop whole trailing cosignature lines leave a valid note.
    assert [len(o.cosigners) for o in opened] == [0, 1]


def test_hostile_notes_are_refused_naming_the_rule() -> None:
    good = cosigned().format()
    body, sigs = good.split(b"\n\n", 1)
    line = sigs.split(b"\n")[0]
    cases = [
        (b"x" * (MAX_NOTE_BYTES + 1), "at most 1048576 bytes"),
        (body + b"\n\n" + (line + b"\n") * 101, "at most 100 signature lines"),
        (body + b"\n\n" + line.replace("\u2014".encode(), b"--") + b"\n", "must start with"),
        (body + b"\n\n" + line.replace("\u2014".encode(), "\u2013".encode()) + b"\n", "em dash"),
        (body + b"\n\n" + line[:-4] + b"!!!!\n", "canonical base64"),
        (body + b"\n\n" + line[:-1] + b"\n", "canonical base64"),  # lost its '=' padding
        (body + "\n\n\u2014 name\n".encode(), "signature line 1"),
        (body + b"\n\n" + line + b"\r\n", "control characters"),
        (body.replace(b"\n", b"\t", 1) + b"\n\n" + sigs, "control characters"),
    ]
    for text, rule in cases:
        with pytest.raises(ValueError, match=re.escape(rule)):
            open_note(text, KNOWN, required=LOG_V)
    with pytest.raises(ValueError, match="must be bytes"):
        open_note(good.decode(), KNOWN, required=LOG_V)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="verifiers: the entry"):
        open_note(good, {("w1.example", 1): W1_V}, required=LOG_V)
    # The same key listed twice is one key.
    assert verifier_map([W1_V, Verifier.parse(W1_V.format())]) == {W1_V.ref: W1_V}


# --- checkpoint bodies ------------------------------------------------------------

ROOT64 = base64.b64encode(bytes(range(32)))


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        (b"\n5\n" + ROOT64 + b"\n", "line 1 (origin): must not be empty"),
        (b"o\n05\n" + ROOT64 + b"\n", "line 2 (size): must have no leading zeroes"),
        (b"o\n+5\n" + ROOT64 + b"\n", "line 2 (size): must be 1-20 ASCII decimal digits"),
        (b"o\n 5\n" + ROOT64 + b"\n", "line 2 (size)"),
        (b"o\n5 \n" + ROOT64 + b"\n", "line 2 (size)"),
        (b"o\n-1\n" + ROOT64 + b"\n", "line 2 (size)"),
        (b"o\n\n" + ROOT64 + b"\n", "line 2 (size)"),
        ("o\n\u0663\n".encode() + ROOT64 + b"\n", "line 2 (size)"),  # an Arabic-Indic 3
        (b"o\n18446744073709551616\n" + ROOT64 + b"\n", "must be at most 2^64-1"),
        (b"o\n" + b"9" * 5000 + b"\n" + ROOT64 + b"\n", "1-20 ASCII decimal digits"),
        (b"o\n5\n" + base64.b64encode(bytes(31)) + b"\n", "line 3 (root hash)"),
        (b"o\n5\n" + ROOT64.rstrip(b"=") + b"\n", "line 3 (root hash)"),
        (b"o\n5\n" + ROOT64[:-2] + b"x=\n", "line 3 (root hash)"),  # non-zero padding bits
        (b"o\n5\n" + ROOT64, "must end with a newline"),
        (b"o\n5\n", "at least 3 lines"),
        (b"o\n5\n" + ROOT64 + b"\n\next\n", "line 4 (extension): must not be empty"),
        (b"o\n5\n" + ROOT64 + b"\n\n", "line 4 (extension): must not be empty"),
        (b"o\n5\n" + ROOT64 + b"\n" + b"e" * MAX_NOTE_BYTES + b"\n", "at most 1048576 bytes"),
        (b"o\xc3\n5\n" + ROOT64 + b"\n", "must be UTF-8"),
        (
            b"o\r\n5\n" + ROOT64 + b"\n",
            "control characters other than newline, found 0x0d on line 1",
        ),
        ("o\n5\n" + ROOT64.decode() + "\n", "must be bytes"),
    ],
)
def test_malformed_checkpoints_are_refused(body: bytes, rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(rule)):
        Checkpoint.parse(body)


def test_checkpoint_fields_are_checked() -> None:
    root_hash = bytes(32)
    for args, rule in [
        (("", 1, root_hash), "origin"),
        (("o\nx", 1, root_hash), "origin"),
        (("o", -1, root_hash), "size"),
        (("o", 1 << 64, root_hash), "size"),
        (("o", True, root_hash), "size"),
        (("o", 1, bytes(31)), "root_hash"),
        (("o", 1, root_hash, ("",)), "extensions[0]"),
        (("o", 1, root_hash, ["x"]), "extensions"),
        (("o", 1, root_hash, ("e" * MAX_NOTE_BYTES,)), "extensions"),
    ]:
        with pytest.raises(ValueError, match=re.escape(rule)):
            Checkpoint(*args)  # type: ignore[arg-type]
    assert Checkpoint.parse(b"o\n0\n" + ROOT64 + b"\n").size == 0


_line = st.text(st.characters(codec="utf-8", min_codepoint=0x20), min_size=1, max_size=20)


@given(
    _line,
    st.integers(0, (1 << 64) - 1),
    st.binary(min_size=32, max_size=32),
    st.lists(_line, max_size=3),
)
def test_checkpoints_round_trip(origin: str, size: int, root_hash: bytes, ext: list[str]) -> None:
    cp = Checkpoint(origin, size, root_hash, tuple(ext))
    assert Checkpoint.parse(cp.body()) == cp
    signed = SignedCheckpoint.sign(cp, ORIGIN, LOG)
    assert open_note(signed.format(), {}, required=LOG_V).checkpoint == cp


def test_signing_refuses_bad_names_and_texts() -> None:
    for name in ("", "a b", "a+b", "a\u00a0b", "a\nb"):
        with pytest.raises(ValueError, match="name"):
            sign_note(CP.body(), name, LOG)
        with pytest.raises(ValueError, match="name"):
            cosign(CP, name, W1, 0)
    for text, rule in [(b"no newline", "newline"), (b"\x00\n", "control"), (b"\xff\n", "UTF-8")]:
        with pytest.raises(ValueError, match=rule):
            sign_note(text, "log", LOG)
    for stamp in (-1, 1 << 63, True):
        with pytest.raises(ValueError, match="timestamp"):
            cosign(CP, "w", W1, stamp)
    with pytest.raises(ValueError, match=r"1\.\.100 signatures"):
        SignedCheckpoint(CP, ())
    with pytest.raises(ValueError, match="key_id"):
        Verifier("log", 0, SignatureType.ED25519, LOG_V.public_key)
