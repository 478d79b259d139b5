"""Tamper evidence: Ed25519 signatures, and the trust file that says whose signatures count.

Each registry (each worker, in a team) signs with its own key, ``.seal/keys/signing.key``
(mode 0600), which never leaves the machine. A version's signature covers its id; a reflog
row's covers its canonical content.

Which keys are trusted is not decided by the database: it is the trust file, a text file the
user controls, like git's ``allowed_signers`` (``.seal/allowed_signers`` by default; ``[trust]
allowed_signers`` in config.toml or ``SEAL_ALLOWED_SIGNERS`` may point a whole team at one
file). One key per line: ``<signer id> <public key hex> [name...]``; ``#`` starts a comment.
A row inserted into the ``signers`` table by SQL alone therefore earns no trust.

>>> line = format_trust_line("ab" * 32, "me@host")
>>> parse_trust_file(line + "\\n# comment\\n")[signer_id("ab" * 32)].name
'me@host'
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import SigningKeyMissing, UserError
from .objects import is_hex64

KEY_FILE = "signing.key"
TRUST_FILE = "allowed_signers"


def _crypto():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


@dataclass(frozen=True)
class TrustedKey:
    id: str
    public_key: str
    name: str


class Signer:
    """The registry's private key, loaded on first use."""

    def __init__(self, keys_dir: Path):
        self.path = Path(keys_dir) / KEY_FILE
        self._key = None

    @property
    def key(self):
        if self._key is None:
            self._key = load_key(self.path)
        return self._key

    @property
    def public_key(self) -> str:
        return public_key_hex(self.key)

    @property
    def id(self) -> str:
        return signer_id(self.public_key)

    def sign(self, data: bytes) -> str:
        return self.key.sign(data).hex()

    def sign_id(self, version_id: str) -> str:
        return self.sign(version_id.encode("ascii"))


def create_key(path: Path):
    """Write a new private key to ``path`` (mode 0600); refuse to overwrite one."""
    serialization, ed25519 = _crypto()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return key


def load_key(path: Path):
    """The private key at ``path``. A missing key is an error: a new one would sign as a stranger."""
    from ..files import read_small

    serialization, ed25519 = _crypto()
    try:
        data = read_small(path, "the signing key", 64 * 1024)
        if os.stat(path).st_mode & 0o077:
            raise SigningKeyMissing(f"the signing key {path} can be read by others; run `chmod 600 {path}` and try again")
    except FileNotFoundError:
        raise SigningKeyMissing(
            f"the signing key {path} is missing; restore it from a backup, or run `seal key new` to "
            f"sign from now on with a new key (versions signed before stay verifiable)"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SigningKeyMissing(f"the signing key {path} is damaged; restore it from a backup or run `seal key new`") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningKeyMissing(f"{path} is not an Ed25519 key; restore seal's key or run `seal key new`")
    return key


def public_key_hex(key) -> str:
    serialization, _ = _crypto()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def signer_id(public_hex: str) -> str:
    return hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()


def check_signature(public_hex: str, data: bytes | str, signature_hex: str) -> bool:
    """Whether ``signature_hex`` is the key's signature of ``data`` (a version id may be given as str)."""
    _, ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    payload = data.encode("ascii") if isinstance(data, str) else data
    try:
        if weak_public_key(public_hex):
            return False
        pub = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        pub.verify(bytes.fromhex(signature_hex), payload)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


# --- the trust file -----------------------------------------------------------------------------

_P = 2**255 - 19
_Y8 = int.from_bytes(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little")
#: y of the 8 points of small order (identity, order 2, 4 and 8; the sign bit picks x). A key there
#: verifies forged signatures for many messages, so it is never trusted (the libsodium blacklist).
_SMALL_ORDER_Y = {0, 1, _P - 1, _Y8, _P - _Y8}


def weak_public_key(public_hex: str) -> bool:
    """Whether an Ed25519 public key is of small order or not canonically encoded.

    >>> weak_public_key("01" + "00" * 31)       # the identity point
    True
    >>> weak_public_key("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    False
    """
    y = int.from_bytes(bytes.fromhex(public_hex), "little") & ((1 << 255) - 1)
    return y >= _P or y in _SMALL_ORDER_Y


def trust_name(name: str) -> str:
    """A key's name as the trust file can hold it: one line of printable UTF-8 (a terminal escape,
    a line break or a lone surrogate from a pulled record becomes '?'); '#' would start a comment."""
    from .objects import UNSAFE_CHARS

    text = "".join("?" if "\ud800" <= ch <= "\udfff" else ch for ch in str(name))
    return " ".join(UNSAFE_CHARS.sub("?", text).split())


def format_trust_line(public_hex: str, name: str) -> str:
    clean = trust_name(name).replace("#", "?") or "unnamed"
    return f"{signer_id(public_hex)} {public_hex} {clean}"


def parse_trust_file(text: str, where: str = TRUST_FILE) -> dict[str, TrustedKey]:
    """Signer id → key, from the trust file's text; a malformed line is an error naming it."""
    keys: dict[str, TrustedKey] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 2)
        if len(parts) < 2 or not is_hex64(parts[0]) or not is_hex64(parts[1]) \
                or signer_id(parts[1]) != parts[0]:
            raise UserError(
                f"{where} line {number} is not '<signer id> <public key hex> [name]' with a matching id; fix it by hand"
            )
        if weak_public_key(parts[1]):
            raise UserError(f"{where} line {number} holds a weak key (small order) that would accept forged "
                            f"signatures; remove that line")
        keys[parts[0]] = TrustedKey(parts[0], parts[1], parts[2] if len(parts) > 2 else "")
    return keys


def read_trust_file(path: Path) -> dict[str, TrustedKey]:
    from ..files import read_small

    try:
        text = read_small(path, "the trust file").decode("utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; fix the trust file by hand") from None
    return parse_trust_file(text, str(path))


def add_trusted(path: Path, public_hex: str, name: str) -> bool:
    """Append a key to the trust file unless it is there; True when it was added.

    The check and the append happen under an exclusive lock, so concurrent pulls trusting the same
    key write it once.
    """
    import fcntl

    if weak_public_key(public_hex):
        raise UserError("that key is of small order and would accept forged signatures; it is never trusted")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        f.seek(0)
        if signer_id(public_hex) in parse_trust_file(f.read(), str(path)):
            return False
        if f.tell() == 0:
            f.write("# seal trust file: one trusted signing key per line: <signer id> <public key hex> [name]\n")
        f.write(format_trust_line(public_hex, name) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True
