"""LoRA weight algebra in rank space, with numpy only.

A LoRA module changes a weight by ``ΔW = s · B @ A`` with ``A`` of shape ``(r, d_in)`` and ``B``
of shape ``(d_out, r)``. Every quantity ``seal diff`` needs (the size of an update, the angle
between two updates, the size of their difference) is a Frobenius norm or inner product of such
products, and those reduce to traces of ``r × r`` matrices:

    ‖s·BA‖²_F          = s² · tr((BᵀB)(AAᵀ))
    ⟨s1·B1A1, s2·B2A2⟩ = s1·s2 · tr((B1ᵀB2)(A2A1ᵀ))

so the ``d_out × d_in`` matrix is never built. Difference norms come from the same Gram matrices,
except when two updates are nearly equal, where a thin QR of the stacked factors avoids
cancellation (see :func:`delta_diff_norm`). For SmolLM2-135M with r=32 that is the difference
between a few MB of ``r × r`` work and building 420 dense matrices (see ``bench/diff.py``).

Adapters are read straight from a PEFT folder (``adapter_config.json`` +
``adapter_model.safetensors``) without torch, so ``seal diff`` starts fast::

    >>> from seal.registry.lora_math import compare_adapters
    >>> report = compare_adapters("adapters/parent", "adapters/child")      # doctest: +SKIP
    >>> report["total"]["diff_norm"], report["total"]["cosine"]               # doctest: +SKIP
    (0.0123, 0.998)

This module must not import torch, transformers or peft.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np

from .adapters import ADAPTER_CONFIG_FILE, WEIGHTS_FILE, parse_json, pattern_value, safetensors_header, tensor_array
from .errors import UserError

__all__ = [
    "LoraFactors",
    "read_safetensors",
    "lora_scale",
    "load_lora_factors",
    "delta_norm",
    "delta_inner",
    "delta_diff_norm",
    "compare_adapters",
    "total_delta_norm",
    "module_layer",
]


class LoraFactors(NamedTuple):
    """One LoRA module: ``ΔW = scale · B @ A`` (up to a transpose, which no norm sees).

    ``A`` is ``(r, d_in)`` and ``B`` is ``(d_out, r)``, kept in the file's precision (float32 for
    bf16/fp16 files) so a large adapter costs no more memory than on disk; the algebra below
    upcasts each module to float64 only while it works on it.
    """

    A: np.ndarray
    B: np.ndarray
    scale: float


#: What :func:`load_lora_factors` and :func:`compare_adapters` accept as an adapter: a PEFT folder,
#: a ``(adapter_config dict, safetensors path)`` pair, or factors already loaded.
AdapterSource = Union[str, os.PathLike, tuple[Mapping[str, Any], Union[str, os.PathLike]],
                      Mapping[str, LoraFactors]]


# --------------------------------------------------------------------------------------------
# Reading safetensors without torch
# --------------------------------------------------------------------------------------------

def read_safetensors(path: str | os.PathLike, *, keys: Iterable[str] | None = None
                     ) -> dict[str, np.ndarray]:
    """Read tensors of a safetensors file into numpy arrays, bf16 included.

    numpy has no bf16, and LoRA adapters trained on a GPU are often saved in bf16. Those tensors
    are widened to float32: a bf16 value is the top half of a float32, so shifting the 16 bits
    left by 16 is exact. The layout is checked first by :func:`seal.registry.adapters.safetensors_header`.

        >>> tensors = read_safetensors("adapter/adapter_model.safetensors")   # doctest: +SKIP
        >>> key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        >>> tensors[key].shape                                                 # doctest: +SKIP
        (16, 576)
    """
    path = Path(path)
    header = safetensors_header(path)
    wanted = list(header.tensors) if keys is None else list(keys)
    out: dict[str, np.ndarray] = {}
    for key in wanted:
        if key not in header.tensors:
            raise KeyError(f"{key!r} is not in {path}")
        out[key] = tensor_array(path, header, key)
    return out


# --------------------------------------------------------------------------------------------
# From PEFT files to factors
# --------------------------------------------------------------------------------------------

# PEFT saves `base_model.model.<module>.lora_A.weight`; in-memory state dicts also carry the
# adapter name (`lora_A.default.weight`), and embeddings use `lora_embedding_A` (no `.weight`).
_LORA_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$"
)
_PEFT_PREFIX = "base_model.model."
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


def module_layer(module: str) -> int | None:
    """The transformer block index of a module name, or None (embeddings, lm_head).

        >>> module_layer("model.layers.12.mlp.down_proj")
        12
    """
    m = _LAYER_INDEX.search(module)
    return int(m.group(1)) if m else None


def lora_scale(config: Mapping[str, Any], module: str) -> float:
    """PEFT's scaling factor for one module: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA.

    ``module`` is the name inside the base model (``model.layers.0.self_attn.q_proj``), which is
    what PEFT matches ``rank_pattern`` and ``alpha_pattern`` against.

        >>> lora_scale({"r": 16, "lora_alpha": 32}, "model.layers.0.self_attn.q_proj")
        2.0
        >>> lora_scale({"r": 16, "lora_alpha": 32, "use_rslora": True}, "x.q_proj")
        8.0
    """
    r = pattern_value(config.get("rank_pattern") or {}, module, config.get("r", 8))
    alpha = pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))
    if config.get("use_rslora", False):
        return float(alpha) / math.sqrt(float(r))
    return float(alpha) / float(r)


def _as_matrix_pair(module: str, A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bring conv LoRA factors to 2-D; ΔW's norm is the same whichever way it is flattened."""
    if A.ndim == 2 and B.ndim == 2:
        return A, B
    if A.ndim == 4 and B.ndim == 4 and B.shape[2:] == (1, 1):
        return A.reshape(A.shape[0], -1), B.reshape(B.shape[0], B.shape[1])
    raise UserError(
        f"LoRA module {module!r} has factors of shape {A.shape} and {B.shape}; seal's rank-space "
        "diff handles linear, embedding and 1x1-output conv LoRA only."
    )


def _factors_from_tensors(config: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                          where: str) -> dict[str, LoraFactors]:
    if config.get("use_dora", False) or any("lora_magnitude_vector" in k for k in tensors):
        # DoRA rescales columns of W + ΔW by a learned magnitude, so ΔW is no longer s·BA.
        raise UserError(f"{where} is a DoRA adapter; seal's weight diff supports plain LoRA only.")
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        if key.endswith(".bias"):
            continue  # lora_bias=True adds a bias delta; it is not part of ΔW = s·BA
        m = _LORA_KEY.match(key)
        if m is None:
            continue  # modules_to_save, trainable tokens, ...: not low-rank, not diffed here
        module = m.group("module")
        if module.startswith(_PEFT_PREFIX):
            module = module[len(_PEFT_PREFIX):]
        side = "A" if m.group("part").endswith("A") else "B"
        halves.setdefault(module, {})[side] = value
    factors: dict[str, LoraFactors] = {}
    for module, pair in sorted(halves.items()):
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise UserError(f"{where}: module {module!r} has no {missing} tensor; "
                            "the adapter file is incomplete.")
        A, B = _as_matrix_pair(module, pair["A"], pair["B"])
        if A.shape[0] != B.shape[1]:
            raise UserError(f"{where}: module {module!r} has lora_A of shape {A.shape} and "
                            f"lora_B of shape {B.shape}; their ranks differ.")
        factors[module] = LoraFactors(A, B, lora_scale(config, module))
    return factors


def load_lora_factors(source: AdapterSource) -> dict[str, LoraFactors]:
    """Read an adapter into ``{module: LoraFactors(A, B, scale)}`` without torch.

    ``source`` is a PEFT adapter folder, or a ``(adapter_config_dict, safetensors_path)`` pair
    (for blobs in the object store, whose file name is a digest), or an already-loaded mapping,
    which is returned as is. Module names are those inside the base model, e.g.
    ``model.layers.0.self_attn.q_proj``. Only safetensors is read, never pickle.

        >>> factors = load_lora_factors("runs/adapter")                      # doctest: +SKIP
        >>> A, B, scale = factors["model.layers.0.self_attn.q_proj"]          # doctest: +SKIP
    """
    if isinstance(source, Mapping):
        return dict(source)  # type: ignore[arg-type]
    if isinstance(source, tuple):
        config, weights = source
        where = str(weights)
    else:
        folder = Path(source)
        config_path = folder / ADAPTER_CONFIG_FILE
        weights = folder / WEIGHTS_FILE
        if not config_path.is_file():
            raise UserError(f"{folder} has no {ADAPTER_CONFIG_FILE}; point at a folder written "
                            "by PeftModel.save_pretrained.")
        if not weights.is_file():
            hint = (" (it has adapter_model.bin: re-save it with safe_serialization=True)"
                    if (folder / "adapter_model.bin").exists() else "")
            raise UserError(f"{folder} has no {WEIGHTS_FILE}{hint}.")
        config = parse_json(config_path.read_bytes(), str(config_path))
        where = str(folder)
    weights = Path(weights)
    header = safetensors_header(weights)
    # Only the LoRA tensors are read: an adapter may also carry large modules_to_save copies.
    lora_keys = [k for k in header.tensors if _LORA_KEY.match(k) or "lora_magnitude_vector" in k]
    tensors = read_safetensors(weights, keys=lora_keys)
    return _factors_from_tensors(config, tensors, where)


# --------------------------------------------------------------------------------------------
# Rank-space algebra
# --------------------------------------------------------------------------------------------

def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def delta_norm(A: np.ndarray, B: np.ndarray, scale: float) -> float:
    """‖scale · B @ A‖_F from the ``r × r`` Gram matrices, never the ``d_out × d_in`` product.

        >>> rng = np.random.default_rng(0)
        >>> A, B = rng.normal(size=(4, 50)), rng.normal(size=(40, 4))
        >>> bool(np.isclose(delta_norm(A, B, 2.0), np.linalg.norm(2.0 * B @ A)))
        True
    """
    A, B = _f64(A), _f64(B)
    sq = float(np.einsum("ij,ji->", B.T @ B, A @ A.T))  # tr(XY) without forming XY
    # Rounding can leave -1e-30 for a zero update; a norm is never negative.
    return abs(scale) * math.sqrt(max(sq, 0.0))


def delta_inner(A1: np.ndarray, B1: np.ndarray, s1: float,
                A2: np.ndarray, B2: np.ndarray, s2: float) -> float:
    """Frobenius inner product ⟨s1·B1A1, s2·B2A2⟩ = s1·s2·tr((B1ᵀB2)(A2A1ᵀ)).

    The two ranks may differ: ``B1ᵀB2`` is ``r1 × r2`` and ``A2A1ᵀ`` is ``r2 × r1``.

        >>> rng = np.random.default_rng(0)
        >>> A1, B1 = rng.normal(size=(4, 30)), rng.normal(size=(20, 4))
        >>> A2, B2 = rng.normal(size=(8, 30)), rng.normal(size=(20, 8))
        >>> dense = float(np.sum((B1 @ A1) * (3 * B2 @ A2)))
        >>> bool(np.isclose(delta_inner(A1, B1, 1.0, A2, B2, 3.0), dense))
        True
    """
    A1, B1, A2, B2 = _f64(A1), _f64(B1), _f64(A2), _f64(B2)
    return float(s1) * float(s2) * float(np.einsum("ij,ji->", B1.T @ B2, A2 @ A1.T))


def delta_diff_norm(A1: np.ndarray, B1: np.ndarray, s1: float,
                    A2: np.ndarray, B2: np.ndarray, s2: float) -> float:
    """‖s1·B1A1 − s2·B2A2‖_F in rank space.

    The difference is itself a low-rank product, ``[s1·B1, −s2·B2] @ [A1; A2]``, of rank at most
    ``r1 + r2``. Expanding ``‖a‖² + ‖b‖² − 2⟨a, b⟩`` would cancel catastrophically when a child
    adapter is close to its parent (which is the common case in a lineage) and keep only about
    half of float64's digits; thin QR of the two stacked factors instead reduces the problem to
    an exact ``(r1+r2)``-square product, with errors relative to the inputs, not to the
    difference:  ``‖B A‖ = ‖R_B R_Aᵀ‖`` when ``B = Q_B R_B`` and ``Aᵀ = Q_A R_A``.

        >>> rng = np.random.default_rng(0)
        >>> A, B = rng.normal(size=(4, 30)), rng.normal(size=(20, 4))
        >>> delta_diff_norm(A, B, 1.0, A, B, 1.0) < 1e-12 * delta_norm(A, B, 1.0)
        True
    """
    A1, B1, A2, B2 = _f64(A1), _f64(B1), _f64(A2), _f64(B2)
    B = np.concatenate([float(s1) * B1, -float(s2) * B2], axis=1)   # d_out × (r1+r2)
    At = np.concatenate([A1, A2], axis=0).T                          # d_in  × (r1+r2)
    R_B = np.linalg.qr(B, mode="r")
    R_A = np.linalg.qr(At, mode="r")
    return float(np.linalg.norm(R_B @ R_A.T))


# Below this share of ‖a‖² + ‖b‖², the Gram expansion of ‖a − b‖² has lost more than ~6 of
# float64's 16 digits to cancellation; only then is the (slower) QR route worth its cost.
_CANCELLATION_GUARD = 1e-6


def _pair_stats(pa: LoraFactors, pb: LoraFactors) -> tuple[float, float, float, float]:
    """(‖a‖², ‖b‖², ‖a − b‖², ⟨a, b⟩) of one module, sharing the Gram matrices between them."""
    A1, B1, A2, B2 = _f64(pa.A), _f64(pa.B), _f64(pb.A), _f64(pb.B)
    s1, s2 = float(pa.scale), float(pb.scale)
    # tr(XY) = Σ X ⊙ Yᵀ; the A-side Gram matrices are symmetric or transposed as needed.
    sq_a = s1 * s1 * float(np.sum((B1.T @ B1) * (A1 @ A1.T)))
    sq_b = s2 * s2 * float(np.sum((B2.T @ B2) * (A2 @ A2.T)))
    inner = s1 * s2 * float(np.sum((B1.T @ B2) * (A1 @ A2.T)))
    sq_a, sq_b = max(sq_a, 0.0), max(sq_b, 0.0)
    sq_diff = sq_a + sq_b - 2.0 * inner
    if sq_diff < _CANCELLATION_GUARD * (sq_a + sq_b):
        sq_diff = delta_diff_norm(A1, B1, s1, A2, B2, s2) ** 2
    return sq_a, sq_b, max(sq_diff, 0.0), inner


def _combine(sq_a: float, sq_b: float, sq_diff: float, inner: float) -> dict[str, float | None]:
    na, nb = math.sqrt(sq_a), math.sqrt(sq_b)
    # Cosine of an update with a zero update has no meaning; None says so in JSON too.
    cosine = inner / (na * nb) if na > 0.0 and nb > 0.0 else None
    if cosine is not None:
        cosine = max(-1.0, min(1.0, cosine))
    return {"norm_a": na, "norm_b": nb, "diff_norm": math.sqrt(sq_diff), "cosine": cosine}


def compare_adapters(a: AdapterSource, b: AdapterSource | None = None) -> dict[str, Any]:
    """Compare two LoRA adapters module by module, in rank space.

    ``b=None`` compares ``a`` with the zero adapter (the base model), so ``diff_norm`` is then the
    size of ``a`` itself. A module present on one side only counts as a zero update on the other.
    Norms of layers and of the whole adapter combine their modules' updates as one block-diagonal
    update: squares of norms and inner products add.

    Returns ``{"modules": [...], "layers": [...], "total": {...}}``; each module row has
    ``module, layer, norm_a, norm_b, diff_norm, cosine`` (``cosine`` is None where a side is
    zero), each layer row ``layer, n_modules, norm_a, norm_b, diff_norm, cosine`` (``layer`` is
    None for modules outside the transformer blocks, such as embeddings).

        >>> report = compare_adapters("v1/adapter", "v2/adapter")            # doctest: +SKIP
        >>> max(report["modules"], key=lambda row: row["diff_norm"])["module"]  # doctest: +SKIP
        'model.layers.17.mlp.down_proj'
    """
    fa = load_lora_factors(a)
    fb = load_lora_factors(b) if b is not None else {}
    rows: list[dict[str, Any]] = []
    sums: dict[int | None, list[float]] = {}
    total = [0.0, 0.0, 0.0, 0.0]  # ‖a‖², ‖b‖², ‖a−b‖², ⟨a,b⟩
    for module in sorted(set(fa) | set(fb), key=lambda m: (module_layer(m) is None,
                                                           module_layer(m) or 0, m)):
        pa, pb = fa.get(module), fb.get(module)
        if pa is not None and pb is not None:
            shape_a, shape_b = (pa.B.shape[0], pa.A.shape[1]), (pb.B.shape[0], pb.A.shape[1])
            if shape_a != shape_b:
                raise UserError(f"Module {module!r} updates a {shape_a} weight in one adapter and a "
                                f"{shape_b} weight in the other; they belong to different base "
                                "models and cannot be compared.")
            stats = _pair_stats(pa, pb)
        else:
            # Present on one side only: the other side is a zero update.
            sq = delta_norm(*(pa if pa is not None else pb)) ** 2
            stats = (sq, 0.0, sq, 0.0) if pa is not None else (0.0, sq, sq, 0.0)
        layer = module_layer(module)
        rows.append({"module": module, "layer": layer, **_combine(*stats)})
        acc = sums.setdefault(layer, [0.0, 0.0, 0.0, 0.0, 0])
        for i, v in enumerate(stats):
            acc[i] += v
            total[i] += v
        acc[4] += 1
    layers = [{"layer": layer, "n_modules": int(acc[4]), **_combine(*acc[:4])}
              for layer, acc in sorted(sums.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
    return {"modules": rows, "layers": layers,
            "total": {"n_modules": len(rows), **_combine(*total)}}


def total_delta_norm(adapter: AdapterSource) -> float:
    """‖ΔW‖_F of a whole adapter: the square root of the sum of its modules' squared norms.

        >>> total_delta_norm("runs/adapter")                                 # doctest: +SKIP
        3.71
    """
    factors = load_lora_factors(adapter)
    return math.sqrt(sum(delta_norm(*f) ** 2 for f in factors.values()))
