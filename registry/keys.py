"""Signing keys and the trust file: `seal key new` and `seal key trust`.

A lost key is never replaced silently (a new key signs as a stranger); `seal key new` makes
one on purpose, keeps the old file if there is one, registers the new signer and adds it to
the trust file.

>>> trust_key(Registry.open(), "ab" * 32, "alice")     # doctest: +SKIP
{'signer': '…', 'name': 'alice', 'added': True}
"""

from __future__ import annotations

import os
import time

from .errors import UserError
from .store import refs as R
from .store.objects import is_hex64
from .store.signing import add_trusted, create_key, public_key_hex, signer_id, trust_name



def new_key(reg) -> dict:
    path = reg.signer.path
    if path.exists():
        retired = path.with_name(f"{path.name}.retired-{time.strftime('%Y%m%dT%H%M%S')}")
        os.rename(path, retired)
    key = create_key(path)
    public = public_key_hex(key)
    add_trusted(reg.trust_path, public, R.actor())
    reg.signer._key = key
    reg._signer_registered = False
    with reg.write() as c:
        reg._register_signer(c)
    return {"signer": signer_id(public), "public_key": public, "trust_file": str(reg.trust_path)}


def trust_key(reg, public_key: str, name: str = "") -> dict:
    public_key = public_key.strip().lower()
    if not is_hex64(public_key):
        raise UserError(f"{public_key[:20]!r} is not an Ed25519 public key; give its 64 hex digits")
    if trust_name(name) != " ".join(name.split()) or "#" in name:
        raise UserError("--name holds control characters, '#' or bytes that are not UTF-8; give a plain name")
    added = add_trusted(reg.trust_path, public_key, name or "trusted by hand")
    return {"signer": signer_id(public_key), "name": name, "added": added}
