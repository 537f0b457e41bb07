"""Checkpoints: signed tree heads as C2SP signed notes, with witness cosignatures.

Three C2SP specifications, for Ed25519 only:

- tlog-checkpoint: the note text is the origin, the tree size in decimal and
  the base64 root hash, one per line, then extension lines (:class:`Checkpoint`);
- signed-note: the text, a blank line, one ``— <key name> base64(key ID ||
  signature)`` line per signature, the key ID being ``SHA-256(name || 0x0A ||
  type || public key)[:4]``; a vkey is ``<name>+<hex key ID>+base64(type ||
  public key)`` (:class:`NoteSignature`, :class:`Verifier`, :func:`sign_note`);
- tlog-cosignature: a witness signs (type 0x04) ``cosignature/v1\\ntime
  <seconds>\\n`` and the checkpoint; its signature bytes are the 8-byte
  big-endian time then the Ed25519 signature (:func:`cosign`).

Notes are read only through :func:`verify_note` or :func:`open_note`: every
signature by a known key (name and ID) must verify, others are ignored as the
spec requires, the required key (the log's) must have signed, and only then
is the text parsed. Parsers take hostile input: sizes are capped before any
work and anything malformed raises :class:`ValueError` naming the rule.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

#: Largest note (or checkpoint body) accepted: past this, parsers refuse
#: before decoding anything.
MAX_NOTE_BYTES = 1024 * 1024
#: Most signature lines a note may carry (the spec asks for at least 16;
#: golang.org/x/mod/sumdb/note also stops at 100).
MAX_SIGNATURES = 100
#: The largest tree size (an unsigned 64-bit integer, as in every tlog client).
MAX_TREE_SIZE = (1 << 64) - 1
#: tlog-cosignature: a timestamp "MUST NOT exceed 2^63 - 1".
MAX_TIMESTAMP = (1 << 63) - 1

ROOT_HASH_SIZE = 32
ED25519_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
_TIMESTAMP_SIZE = 8
_KEY_ID_SIZE = 4

#: U+2014 EM DASH and a space start every signature line.
SIGNATURE_PREFIX = "\u2014 "
COSIGNATURE_HEADER = b"cosignature/v1\n"

#: ASCII control characters other than newline, which signed notes forbid.
_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f]")
_SIZE_LINE = re.compile(r"[0-9]{1,20}")
_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}")

#: A key as signature lines name it: (key name, key ID).
KeyRef = tuple[str, int]


class SignatureType(IntEnum):
    """Signature type bytes of signed-note that this module implements."""

    #: Plain Ed25519 over the note text (signed-note); what a log signs with.
    ED25519 = 0x01
    #: Timestamped Ed25519 checkpoint cosignature (tlog-cosignature); witnesses.
    COSIGNATURE_V1 = 0x04


class UnverifiedNoteError(ValueError):
    """A well-formed note whose known key's signature fails, or unsigned by the required key."""


def key_id(name: str, kind: SignatureType, public_key: bytes) -> int:
    """``SHA-256(name || 0x0A || type || public key)[:4]`` as a big-endian
    unsigned 32-bit integer (signed-note, tlog-cosignature)."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + bytes(public_key)).digest()
    return int.from_bytes(digest[:_KEY_ID_SIZE], "big")


def _utf8(value: object, field: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: must be a non-empty string")
    try:
        return value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{field}: must be valid Unicode (no lone surrogates)") from None


def _check_name(name: object, field: str) -> None:
    """A key name: non-empty, no Unicode space, no '+', no control character."""
    bad = [c for c in _utf8(name, field).decode() if c == "+" or c.isspace() or ord(c) < 0x20]
    if bad:
        raise ValueError(f"{field}: must not contain spaces, '+' or control characters: {bad[0]!r}")


def _uint(value: object, limit: int) -> bool:
    """Whether ``value`` is an int (not a bool) in 0..limit."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def _check_text_line(line: object, field: str) -> None:
    raw = _utf8(line, field)
    if b"\n" in raw or _CONTROL.search(raw):
        raise ValueError(f"{field}: must not contain a newline or control characters")


def _check_note_text(text: object, field: str) -> bytes:
    """Note text as signed-note requires: UTF-8, no control character but
    newline, ending in a newline, at most MAX_NOTE_BYTES."""
    if not isinstance(text, bytes):
        raise ValueError(f"{field}: must be bytes, got {type(text).__name__}")
    if len(text) > MAX_NOTE_BYTES:
        raise ValueError(f"{field}: must be at most {MAX_NOTE_BYTES} bytes, got {len(text)}")
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{field}: must be UTF-8") from None
    found = _CONTROL.search(text)
    if found:
        line = text.count(b"\n", 0, found.start()) + 1
        raise ValueError(
            f"{field}: must not contain control characters other than newline, "
            f"found 0x{found.group()[0]:02x} on line {line}"
        )
    if not text.endswith(b"\n"):
        raise ValueError(f"{field}: must end with a newline")
    return text


def _b64decode(text: str) -> bytes | None:
    """Standard base64 (RFC 4648 §4) in its one canonical spelling, else None."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode() == text else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _public_bytes(key: Ed25519PublicKey | bytes) -> bytes:
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return bytes(key)


@dataclass(frozen=True)
class Checkpoint:
    """A tlog-checkpoint: the log's ``origin``, tree ``size`` and ``root_hash``,
    plus opaque ``extensions`` lines (NOT RECOMMENDED by the spec).

    Construction raises :class:`ValueError` naming the field: an empty origin,
    a newline or control character in a line, a size outside 0..2^64-1, a
    root hash that is not 32 bytes, an empty extension line.
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_text_line(self.origin, "origin")
        if not _uint(self.size, MAX_TREE_SIZE):
            raise ValueError(f"size: must be an integer in 0..2^64-1, got {self.size!r}")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != ROOT_HASH_SIZE:
            raise ValueError(f"root_hash: must be {ROOT_HASH_SIZE} bytes")
        if not isinstance(self.extensions, tuple):
            raise ValueError("extensions: must be a tuple of strings")
        for i, ext in enumerate(self.extensions):
            _check_text_line(ext, f"extensions[{i}]")
        if len(self.body()) > MAX_NOTE_BYTES:
            raise ValueError(f"extensions: the body must be at most {MAX_NOTE_BYTES} bytes")

    def body(self) -> bytes:
        """The note text: ``origin\\nsize\\nbase64(root)\\n`` then each extension
        line and a newline; :meth:`parse` gives back an equal checkpoint."""
        lines = [self.origin, str(self.size), _b64(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines).encode()

    @classmethod
    def parse(cls, body: bytes) -> Checkpoint:
        """The checkpoint whose :meth:`body` is ``body``.

        Raises :class:`ValueError` naming the line and the rule: more than
        :data:`MAX_NOTE_BYTES`, not UTF-8, a control character, no final
        newline, fewer than three lines, an empty origin, a size that is not
        plain decimal (leading zeroes, signs, spaces) or past 2^64-1, a root
        that is not the canonical base64 of 32 bytes, an empty extension line.
        """
        text = _check_note_text(body, "checkpoint").decode()
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise ValueError(
                "checkpoint: must have at least 3 lines (origin, size, root hash), "
                f"got {len(lines)}"
            )
        origin, size, root = lines[:3]
        if not origin:
            raise ValueError("checkpoint line 1 (origin): must not be empty")
        if not _SIZE_LINE.fullmatch(size):
            raise ValueError(
                f"checkpoint line 2 (size): must be 1-20 ASCII decimal digits, got {size[:24]!r}"
            )
        if len(size) > 1 and size.startswith("0"):
            raise ValueError("checkpoint line 2 (size): must have no leading zeroes")
        if int(size) > MAX_TREE_SIZE:
            raise ValueError("checkpoint line 2 (size): must be at most 2^64-1")
        root_hash = _b64decode(root)
        if root_hash is None or len(root_hash) != ROOT_HASH_SIZE:
            raise ValueError(
                f"checkpoint line 3 (root hash): must be the base64 of {ROOT_HASH_SIZE} bytes"
            )
        for i, ext in enumerate(lines[3:], start=4):
            if not ext:
                raise ValueError(f"checkpoint line {i} (extension): must not be empty")
        return cls(origin, int(size), root_hash, tuple(lines[3:]))


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: ``— <name> base64(key_id || signature)``.

    ``signature`` is what follows the key ID: 64 bytes for Ed25519, the
    8-byte time then 64 bytes for a cosignature. It is not verified here.
    """

    name: str
    key_id: int
    signature: bytes

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        if not _uint(self.key_id, (1 << 32) - 1):
            raise ValueError("key_id: must be an unsigned 32-bit integer")
        if not isinstance(self.signature, bytes) or not self.signature:
            raise ValueError("signature: must be non-empty bytes")

    @property
    def ref(self) -> KeyRef:
        """The key this line claims: (name, key ID)."""
        return (self.name, self.key_id)

    def line(self) -> bytes:
        """The signature line, UTF-8, with its final newline."""
        blob = self.key_id.to_bytes(_KEY_ID_SIZE, "big") + self.signature
        return f"{SIGNATURE_PREFIX}{self.name} {_b64(blob)}\n".encode()

    @classmethod
    def parse_line(cls, line: str, *, field: str = "signature line") -> NoteSignature:
        """The signature of one line (without its newline); :class:`ValueError`
        naming ``field`` if it does not start with the em dash and a space, has
        a bad key name, or its signature is not canonical base64 of at least
        5 bytes."""
        if not line.startswith(SIGNATURE_PREFIX):
            raise ValueError(f"{field}: must start with '\u2014 ' (U+2014 em dash, space)")
        name, sep, blob64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not sep:
            raise ValueError(f"{field}: must be '\u2014 <key name> <base64 signature>'")
        _check_name(name, f"{field} key name")
        blob = _b64decode(blob64)
        if blob is None or len(blob) <= _KEY_ID_SIZE:
            raise ValueError(
                f"{field}: the signature must be canonical base64 of a 4-byte key ID "
                "and at least one signature byte"
            )
        return cls(name, int.from_bytes(blob[:_KEY_ID_SIZE], "big"), blob[_KEY_ID_SIZE:])


@dataclass(frozen=True)
class Verifier:
    """A verifier key (vkey): a key name, its key ID, its signature type and
    its 32-byte Ed25519 public key.

    Construction raises :class:`ValueError` if the name is not a valid key
    name, the type is not one of :class:`SignatureType`, the key is not 32
    bytes, or ``key_id`` is not the ID the spec derives from the rest.
    """

    name: str
    key_id: int
    kind: SignatureType
    public_key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        if self.kind not in tuple(SignatureType):
            raise ValueError(f"kind: must be one of {[f'0x{k:02x}' for k in SignatureType]}")
        # Accept a plain int, keep the enum: verify() tests the kind by identity.
        object.__setattr__(self, "kind", SignatureType(self.kind))
        if not isinstance(self.public_key, bytes) or len(self.public_key) != ED25519_KEY_SIZE:
            raise ValueError(f"public_key: must be {ED25519_KEY_SIZE} bytes (Ed25519)")
        want = key_id(self.name, self.kind, self.public_key)
        if self.key_id != want:
            raise ValueError(
                f"key_id: must be SHA-256(name || 0x0A || type || key)[:4], {want:08x}"
            )

    @classmethod
    def from_public_key(
        cls,
        name: str,
        public_key: Ed25519PublicKey | bytes,
        kind: SignatureType = SignatureType.ED25519,
    ) -> Verifier:
        """The verifier of ``public_key`` under ``name``, its key ID derived."""
        raw = _public_bytes(public_key)
        _check_name(name, "name")
        return cls(name, key_id(name, SignatureType(kind), raw), SignatureType(kind), raw)

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        """Parse ``<name>+<8 lowercase hex key ID>+base64(type || public key)``.

        Raises :class:`ValueError` naming the part and the rule: a missing
        part, a bad name, a key ID that is not 8 lowercase hex digits or does
        not match the key, non-canonical base64, an unsupported type, a key
        that is not 32 bytes.
        """
        if not isinstance(vkey, str) or len(vkey) > 1024:
            raise ValueError("vkey: must be a string of at most 1024 characters")
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise ValueError("vkey: must be '<name>+<hex key ID>+<base64 type and key>'")
        name, id_hex, key64 = parts
        _check_name(name, "vkey name")
        if not _KEY_ID_HEX.fullmatch(id_hex):
            raise ValueError("vkey key ID: must be 8 lowercase hex digits")
        raw = _b64decode(key64)
        if raw is None or not raw:
            raise ValueError("vkey key: must be canonical base64 of the type byte and the key")
        if raw[0] not in tuple(SignatureType):
            raise ValueError(f"vkey key: unsupported signature type 0x{raw[0]:02x}")
        kind, public_key = SignatureType(raw[0]), raw[1:]
        if len(public_key) != ED25519_KEY_SIZE:
            raise ValueError(f"vkey key: an Ed25519 key must be {ED25519_KEY_SIZE} bytes")
        if int(id_hex, 16) != key_id(name, kind, public_key):
            raise ValueError("vkey key ID: does not match the name, type and key")
        return cls(name, int(id_hex, 16), kind, public_key)

    def format(self) -> str:
        """The vkey string; :meth:`parse` gives back an equal verifier."""
        return f"{self.name}+{self.key_id:08x}+{_b64(bytes([self.kind]) + self.public_key)}"

    def __str__(self) -> str:
        return self.format()

    @property
    def ref(self) -> KeyRef:
        """The key as signature lines name it: (name, key ID)."""
        return (self.name, self.key_id)

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (the bytes after the key ID) is this key's
        signature of the note text ``text``. Never raises on a bad signature."""
        if self.kind is SignatureType.COSIGNATURE_V1:
            if len(signature) != _TIMESTAMP_SIZE + ED25519_SIGNATURE_SIZE:
                return False
            timestamp = int.from_bytes(signature[:_TIMESTAMP_SIZE], "big")
            if timestamp > MAX_TIMESTAMP:
                return False
            message = _cosignature_message(timestamp, text)
            signature = signature[_TIMESTAMP_SIZE:]
        else:
            if len(signature) != ED25519_SIGNATURE_SIZE:
                return False
            message = text
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


def verifier_map(verifiers: Iterable[Verifier]) -> dict[KeyRef, Verifier]:
    """``verifiers`` keyed by (name, key ID), as :func:`open_note` takes them.

    Raises :class:`ValueError` if two different keys share a name and ID: a
    signature by either could not be told apart.
    """
    out: dict[KeyRef, Verifier] = {}
    for v in verifiers:
        if v.ref in out and out[v.ref] != v:
            raise ValueError(f"verifiers: two keys are named {v.name}+{v.key_id:08x}")
        out[v.ref] = v
    return out


def _cosignature_message(timestamp: int, body: bytes) -> bytes:
    return COSIGNATURE_HEADER + f"time {timestamp}\n".encode() + body


def sign_note(body: bytes, name: str, private_key: Ed25519PrivateKey) -> NoteSignature:
    """The Ed25519 (type 0x01) signature of the note text ``body`` by
    ``private_key`` under ``name``; ``.line()`` is the signature line.

    Deterministic (Ed25519). Raises :class:`ValueError` if ``name`` is not a
    valid key name or ``body`` is not valid note text (UTF-8, no control
    characters but newline, ending in a newline, at most 1 MiB).
    """
    _check_name(name, "name")
    _check_note_text(body, "body")
    public_key = _public_bytes(private_key.public_key())
    kid = key_id(name, SignatureType.ED25519, public_key)
    return NoteSignature(name, kid, private_key.sign(body))


def cosign(
    checkpoint: Checkpoint, name: str, private_key: Ed25519PrivateKey, timestamp: int
) -> NoteSignature:
    """The tlog-cosignature/v1 (type 0x04) signature of ``checkpoint`` by the
    witness ``name`` at ``timestamp`` (POSIX seconds).

    The signed message is ``cosignature/v1\\ntime <timestamp>\\n`` and the
    checkpoint body, extension lines included; the signature bytes are the
    8-byte big-endian timestamp then the 64-byte Ed25519 signature. Raises
    :class:`ValueError` for a bad name or a timestamp outside 0..2^63-1.
    """
    _check_name(name, "name")
    if not _uint(timestamp, MAX_TIMESTAMP):
        raise ValueError(
            f"timestamp: must be an integer in 0..2^63-1 (POSIX seconds), got {timestamp!r}"
        )
    public_key = _public_bytes(private_key.public_key())
    kid = key_id(name, SignatureType.COSIGNATURE_V1, public_key)
    sig = private_key.sign(_cosignature_message(timestamp, checkpoint.body()))
    return NoteSignature(name, kid, timestamp.to_bytes(_TIMESTAMP_SIZE, "big") + sig)


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint and its signature lines, in order: the note a log serves.

    Holds 1..:data:`MAX_SIGNATURES` signatures, unverified: read notes with
    :func:`open_note`, which verifies them.
    """

    checkpoint: Checkpoint
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.signatures, tuple) or not all(
            isinstance(s, NoteSignature) for s in self.signatures
        ):
            raise ValueError("signatures: must be a tuple of NoteSignature")
        if not 1 <= len(self.signatures) <= MAX_SIGNATURES:
            raise ValueError(
                f"signatures: a note has 1..{MAX_SIGNATURES} signatures, got {len(self.signatures)}"
            )
        if len(self.format()) > MAX_NOTE_BYTES:
            raise ValueError(f"signatures: the note must be at most {MAX_NOTE_BYTES} bytes")

    @classmethod
    def sign(
        cls, checkpoint: Checkpoint, name: str, private_key: Ed25519PrivateKey
    ) -> SignedCheckpoint:
        """``checkpoint`` signed by the log key ``name`` (type 0x01, Ed25519)."""
        return cls(checkpoint, (sign_note(checkpoint.body(), name, private_key),))

    def with_signature(self, signature: NoteSignature) -> SignedCheckpoint:
        """This note with ``signature`` (say a cosignature) appended."""
        return SignedCheckpoint(self.checkpoint, (*self.signatures, signature))

    def format(self) -> bytes:
        """The whole note: the body, a blank line, one line per signature."""
        return self.checkpoint.body() + b"\n" + b"".join(s.line() for s in self.signatures)


@dataclass(frozen=True)
class VerifiedSignature:
    """A signature :func:`verify_note` verified, and the key that made it."""

    verifier: Verifier
    #: The cosignature's time (POSIX seconds); None for a plain Ed25519 signature.
    timestamp: int | None


@dataclass(frozen=True)
class VerifiedNote:
    """What :func:`verify_note` proved: the note ``text`` (with its final
    newline), every signature line as received, the known keys that signed
    (each once, in note order) and how many lines were by unknown keys."""

    text: bytes
    signatures: tuple[NoteSignature, ...]
    verified: tuple[VerifiedSignature, ...]
    unknown: int

    @property
    def signers(self) -> tuple[VerifiedSignature, ...]:
        """The verified plain Ed25519 signatures (a log's)."""
        return tuple(v for v in self.verified if v.verifier.kind is SignatureType.ED25519)

    @property
    def cosigners(self) -> tuple[VerifiedSignature, ...]:
        """The verified cosignature/v1 signatures (witnesses'), with their times."""
        return tuple(v for v in self.verified if v.verifier.kind is SignatureType.COSIGNATURE_V1)


@dataclass(frozen=True)
class OpenedCheckpoint(VerifiedNote):
    """What :func:`open_note` proved: a verified note whose text is ``checkpoint``."""

    checkpoint: Checkpoint

    @property
    def signed(self) -> SignedCheckpoint:
        """The note as received, every signature line kept (to serve it on)."""
        return SignedCheckpoint(self.checkpoint, self.signatures)


def split_note(text: bytes) -> tuple[bytes, list[NoteSignature]]:
    """The text and the signatures of a signed note, unverified (the reader
    :func:`verify_note` uses). Raises :class:`ValueError` for a malformed note."""
    _check_note_text(text, "note")
    # The text ends at the last blank line; the text itself may hold blank lines.
    split = text.rfind(b"\n\n")
    if split < 0:
        raise ValueError("note: must have a blank line between the text and the signatures")
    body, block = text[: split + 1], text[split + 2 :]
    if not block:
        raise ValueError("note: must have at least one signature line after the blank line")
    if block.count(b"\n") > MAX_SIGNATURES:
        raise ValueError(f"note: must have at most {MAX_SIGNATURES} signature lines")
    lines = block[:-1].decode().split("\n")
    sigs = [
        NoteSignature.parse_line(line, field=f"note signature line {i}")
        for i, line in enumerate(lines, start=1)
    ]
    return body, sigs


def verify_note(
    text: bytes, verifiers: Mapping[KeyRef, Verifier], *, required: Verifier
) -> VerifiedNote:
    """Verify the signed note ``text`` (any text, not only a checkpoint).

    ``verifiers`` are the known keys by (name, key ID) (see
    :func:`verifier_map`); ``required`` must have signed and is known too.
    Following signed-note: a line by an unknown key (even one sharing a name
    or an ID, not both, with a known key) is ignored and counted; a line by a
    known key must verify. Cosignatures (type 0x04) report their time; this
    module has no clock, so the caller judges freshness.

    Raises :class:`ValueError` for a malformed note (over 1 MiB, not UTF-8,
    control characters, no blank line, over :data:`MAX_SIGNATURES` lines, a
    line not starting with the em dash, bad base64) or a ``verifiers`` entry
    filed under another key, and its subclass :class:`UnverifiedNoteError`
    when a known key's signature fails or ``required`` did not sign.
    """
    known = dict(verifiers)
    for ref, entry in known.items():
        if not isinstance(entry, Verifier) or ref != entry.ref:
            raise ValueError(f"verifiers: the entry {ref!r} must be the Verifier of that key")
    if known.setdefault(required.ref, required) != required:
        raise ValueError("required: another key is known under its name and key ID")
    body, sigs = split_note(text)
    verified: dict[KeyRef, VerifiedSignature] = {}
    unknown = 0
    for sig in sigs:
        v: Verifier | None = known.get(sig.ref)
        if v is None:
            unknown += 1
            continue
        if not v.verify(body, sig.signature):
            raise UnverifiedNoteError(
                f"note: the signature by known key {v.name}+{v.key_id:08x} does not verify"
            )
        if sig.ref not in verified:
            cosigned = v.kind is SignatureType.COSIGNATURE_V1
            stamp = int.from_bytes(sig.signature[:_TIMESTAMP_SIZE], "big") if cosigned else None
            verified[sig.ref] = VerifiedSignature(v, stamp)
    if required.ref not in verified:
        raise UnverifiedNoteError(
            f"note: has no verified signature by the required key "
            f"{required.name}+{required.key_id:08x}"
        )
    return VerifiedNote(body, tuple(sigs), tuple(verified.values()), unknown)


def open_note(
    text: bytes, verifiers: Mapping[KeyRef, Verifier], *, required: Verifier
) -> OpenedCheckpoint:
    """Verify the signed checkpoint ``text`` as :func:`verify_note` does, then
    parse its text as a :class:`Checkpoint`.

    The text is read only once a trusted key's signature over it verified, as
    signed-note requires. Raises what :func:`verify_note` raises, and
    :class:`ValueError` naming the line and rule if the text is not a
    checkpoint (see :meth:`Checkpoint.parse`).
    """
    note = verify_note(text, verifiers, required=required)
    checkpoint = Checkpoint.parse(note.text)
    return OpenedCheckpoint(note.text, note.signatures, note.verified, note.unknown, checkpoint)
