"""Tamper evidence: every version id is signed with the registry's Ed25519 key.

The private key lives in ``.seal/keys/signing.key`` (mode 0600) and never leaves the machine;
the public key is registered in the ``signers`` table, so ``seal verify`` can check every
signature against keys the registry trusts.

>>> key = load_or_create_key(Path(".seal/keys"))            # doctest: +SKIP
>>> sig = sign(key, version_id)                               # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

KEY_FILE = "signing.key"


def _crypto():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def load_or_create_key(keys_dir: Path):
    serialization, ed25519 = _crypto()
    path = Path(keys_dir) / KEY_FILE
    if path.exists():
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def public_key_hex(key) -> str:
    serialization, _ = _crypto()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def signer_id(public_hex: str) -> str:
    return hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()


def sign(key, version_id: str) -> str:
    return key.sign(version_id.encode("ascii")).hex()


def check_signature(public_hex: str, version_id: str, signature_hex: str) -> bool:
    _, ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    try:
        pub = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        pub.verify(bytes.fromhex(signature_hex), version_id.encode("ascii"))
        return True
    except (InvalidSignature, ValueError):
        return False
