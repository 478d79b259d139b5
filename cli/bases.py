"""Describing the base model given to `seal init --base` (this loads no model, but may
dequantize a GGUF into the shared cache once, which needs torch)."""

from __future__ import annotations

from seal.registry.errors import UserError


def describe_base(spec: str | None) -> dict:
    from seal.editor.base import default_cache_dir, prepare_base
    from seal.registry.bases import base_record

    try:
        desc, weights_dir, fingerprint = prepare_base(spec, cache_dir=default_cache_dir())
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    from seal.registry.adapters import linear_shapes

    return base_record(
        fingerprint=fingerprint,
        name=desc["name"],
        revision=desc["revision"],
        source=desc["kind"],
        location=desc["source"],
        info={"weights_dir": str(weights_dir), "shapes": {k: list(v) for k, v in linear_shapes(weights_dir).items()}},
    )
