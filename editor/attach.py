"""Scoring a stored adapter: attached to the loaded base, merged into its weights when that is exact.

PEFT's unmerged LoRA layers add two small matmuls and a Python dispatch to every targeted linear
layer on every forward pass; for a 135M model generating a token at a time that overhead is a
large share of the time. Merging ``W + (alpha/r)·B·A`` into the weights removes it. Merging is
done only where it is exact and undone exactly:

- the base runs in float32 (in bf16, adding a small ``ΔW`` to ``W`` rounds most of it away, so on
  a bf16 GPU the adapter stays in PEFT's fp32 LoRA layers);
- the adapter is plain LoRA on ``nn.Linear`` layers (no DoRA, no bias, no per-module rank
  patterns, nothing saved besides the factors) - anything else goes through PEFT;
- the merged weight is a new tensor swapped in; the base's own tensor is put back untouched
  afterwards, never recomputed by subtraction.

What is scored is read from the saved folder, so it is exactly the bytes that get stored.

    >>> with attached(base.model, "work/candidate0") as model:       # doctest: +SKIP
    ...     measured, efficacy = measure(model, tok, probes, spec)
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seal.registry.adapters import ADAPTER_CONFIG_FILE, WEIGHTS_FILE

SAVED_PREFIX = "base_model.model."
# Config keys whose non-empty value means "not a plain LoRA": leave those to PEFT.
UNSUPPORTED_KEYS = ("use_dora", "fan_in_fan_out", "lora_bias", "modules_to_save", "layer_replication",
                "trainable_token_indices", "target_parameters", "rank_pattern", "alpha_pattern",
                "alora_invocation_tokens", "use_qalora", "use_bdlora", "arrow_config")


@contextlib.contextmanager
def attached(model: Any, adapter_dir: Path | str | None, *, merge: bool = True) -> Iterator[Any]:
    """The base with the adapter in ``adapter_dir`` for the block (the base itself for None).

    With ``merge`` (the default) the adapter is merged into the weights when :func:`merge_plan`
    says that is exact; otherwise it is attached through PEFT (:func:`seal.editor.train.adapter_applied`).
    """
    if adapter_dir is None:
        yield model
        return
    plan = merge_plan(model, adapter_dir) if merge else None
    if plan is None:
        from .train import adapter_applied

        with adapter_applied(model, adapter_dir) as peft_model:
            yield peft_model
        return
    with merged(model, plan):
        yield model


def merge_plan(model: Any, adapter_dir: Path | str) -> list[tuple[Any, Any, Any, float]] | None:
    """``[(linear module, A, B, scale)]`` for a plain fp32 LoRA adapter, or None when merging
    would not be exact or the adapter is not plain LoRA."""
    import torch
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    if next(model.parameters()).dtype not in (torch.float32, torch.float64):
        return None
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    if config.get("peft_type", "LORA") != "LORA" or config.get("bias", "none") != "none":
        return None
    if any(config.get(key) for key in UNSUPPORTED_KEYS):
        return None
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        return None
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    tensors = load_file(str(adapter_dir / WEIGHTS_FILE))
    modules = dict(model.named_modules())
    plan = []
    for key in sorted(tensors):
        if key.endswith(".lora_B.weight") and key[: -len(".lora_B.weight")] + ".lora_A.weight" in tensors:
            continue
        if not (key.startswith(SAVED_PREFIX) and key.endswith(".lora_A.weight")):
            return None
        name = key[len(SAVED_PREFIX): -len(".lora_A.weight")]
        a, b = tensors[key], tensors.get(f"{SAVED_PREFIX}{name}.lora_B.weight")
        module = modules.get(name)
        if b is None or not isinstance(module, torch.nn.Linear) or a.ndim != 2 or b.ndim != 2 \
                or a.shape[0] != r or b.shape[1] != r or (b.shape[0], a.shape[1]) != tuple(module.weight.shape):
            return None
        plan.append((module, a, b, scale))
    return plan or None


# Each merged module's weight is written into a buffer kept for that module, and each delta into one
# kept per shape: a fresh tensor per merge (the base's linear weights, 425 MB for SmolLM2) is fresh
# pages for the kernel to fault in, and that was most of a merge's time (1.08 s against 0.61 s, the
# median of 12 on this CPU, same bits).
# Kept buffers stay allocated between merges (while a candidate trains, too), so only up to
# KEEP_BYTES of them: a larger model's merge allocates its weights afresh each time, as before.
KEEP_BYTES = 2 << 30
_MERGED: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_DELTAS = threading.local()  # per thread: two threads merging two models never share a delta


@contextlib.contextmanager
def merged(model: Any, plan: list[tuple[Any, Any, Any, float]]) -> Iterator[Any]:
    """Swap in ``W + scale·B·A`` for each planned module; put the original tensors back after."""
    import torch

    originals: list[tuple[Any, Any]] = []
    try:
        with torch.no_grad():
            for module, a, b, scale in plan:
                weight = module.weight
                delta = _scratch((b.shape[0], a.shape[1], weight.dtype, weight.device), weight)
                torch.matmul(b.to(weight.device, weight.dtype), a.to(weight.device, weight.dtype), out=delta)
                delta.mul_(scale)
                out = _MERGED.get(module)
                if out is not None and out.data_ptr() == weight.data_ptr():
                    out = torch.empty_like(weight)  # a merge inside a merge: the outer one's buffer is in use
                elif out is None or (out.shape, out.dtype, out.device) != (weight.shape, weight.dtype, weight.device):
                    out = torch.empty_like(weight)
                    if _kept_bytes() + out.numel() * out.element_size() <= KEEP_BYTES:
                        _MERGED[module] = out
                torch.add(weight, delta, out=out)
                originals.append((module, weight))
                module.weight = torch.nn.Parameter(out, requires_grad=False)
        yield model
    finally:
        for module, weight in originals:
            module.weight = weight


def _kept_bytes() -> int:
    return sum(t.numel() * t.element_size() for t in _MERGED.values())


def _scratch(key: tuple, like: Any) -> Any:
    import torch

    kept = _DELTAS.__dict__.setdefault("kept", {})
    if key not in kept:
        kept[key] = torch.empty(key[:2], dtype=like.dtype, device=like.device)
    return kept[key]


__all__ = ["attached", "merge_plan", "merged"]
