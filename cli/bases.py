"""Describing the base model given to `seal init --base` (this loads no model, but may
dequantize a GGUF into the shared cache once, which needs torch)."""

from __future__ import annotations

import os
from pathlib import Path

from seal.registry.errors import UserError


def base_cache_dir() -> Path:
    """Where dequantized bases are cached, shared by every registry on this machine."""
    root = os.environ.get("SEAL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "seal"
    )
    return Path(root) / "bases"


def describe_base(spec: str | None) -> dict:
    from seal.editor.base import prepare_base
    from seal.registry.bases import base_record

    try:
        desc, weights_dir, fingerprint = prepare_base(spec, cache_dir=base_cache_dir())
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    return base_record(
        fingerprint=fingerprint,
        name=desc["name"],
        revision=desc["revision"],
        source=desc["kind"],
        location=desc["source"],
        info={"weights_dir": str(weights_dir)},
    )
