"""Describing the base model given to `seal init --base` (this loads no model, but may
dequantize a GGUF into the shared cache once, which needs torch)."""

from __future__ import annotations

from seal.registry.errors import UserError


def check_base_spec(spec: str | None) -> None:
    """That the base names something that exists here (cheap: no check of its files, no model)."""
    from seal.editor.base import describe_base as where_base_is

    try:
        where_base_is(spec)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None


def describe_base(spec: str | None, progress=None) -> dict:
    from seal.editor.base import default_cache_dir, prepare_base
    from seal.registry.bases import base_record

    try:
        desc, weights_dir, fingerprint = prepare_base(spec, cache_dir=default_cache_dir(), progress=progress)
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


def measure_base(reg, progress) -> None:
    """The base's own probe results (retention, drift, refusal), measured once per machine, base and
    probe set and cached (seal.editor.measure.base_measurements), so the first edit loads like any
    later one. A failure here leaves the new registry as it is: the first edit measures instead."""
    from seal.editor.session import open_session

    try:
        with open_session(reg, device="auto", progress=progress):
            pass
    except (UserError, OSError, MemoryError) as e:
        progress.say(f"note: the base's probe results were not measured now ({str(e).splitlines()[0]}); "
                     "the first edit measures them")
