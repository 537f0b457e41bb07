"""Each region's audit key: the Ed25519 key its agent signs checkpoints with
(and cosigns the other regions' checkpoints with).

A key directory holds ``<region>.key`` (the private key, PKCS#8 PEM, mode
0600) for the regions whose agents run here, and ``<region>.pub`` (the public
key, PEM) for every region, so each agent can check the others' checkpoints
and ``meridian audit verify`` can check them all. The sandbox makes them in
``<security.ca_dir>/audit``; on a real deployment each region keeps its
private key and every region (and every auditor) gets all the ``.pub`` files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meridian.security.ca import private_key_pem, write_file


def ensure_keys(directory: Path, regions: Iterable[str]) -> list[str]:
    """Make the key pair of each of ``regions`` that has none in ``directory``;
    the regions it made keys for."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    made = []
    for region in regions:
        private = directory / f"{region}.key"
        if private.exists():
            continue
        key = Ed25519PrivateKey.generate()
        write_file(private, private_key_pem(key), private=True)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        write_file(directory / f"{region}.pub", public)
        made.append(region)
    return made


def load_private(directory: Path, region: str) -> Ed25519PrivateKey | None:
    """``region``'s private key, or None if this directory has none. ValueError
    when the file is not an Ed25519 private key."""
    path = directory / f"{region}.key"
    if not path.exists():
        return None
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_public(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Every region's public key in ``directory``, by region. ValueError naming
    a file that is not an Ed25519 public key."""
    out: dict[str, Ed25519PublicKey] = {}
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.pub")):
        key = serialization.load_pem_public_key(path.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: not an Ed25519 public key")
        out[path.stem] = key
    return out
