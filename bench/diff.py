"""Benchmark: rank-space adapter diff vs building every dense ΔW.

Two synthetic LoRA adapters the size of one on SmolLM2-135M (hidden 576, intermediate 1536,
30 layers, 9 query / 3 key-value heads of dim 64; r=32 on all 7 linear modules of each layer) are
written as PEFT folders. ``compare_adapters`` (reads the files, works on r×r matrices) is timed
against the dense route (reads the same files, builds every ``s·B@A`` in float64, takes norms and
difference norms). Both include reading the files. Prints one JSON line::

    python bench/diff.py
    {"bench": "diff", "modules": 210, "rxr_seconds": ..., "dense_seconds": ..., "ratio": ..., ...}
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from seal.registry.lora_math import compare_adapters, load_lora_factors

HIDDEN, INTERMEDIATE, LAYERS, HEAD_DIM, KV_HEADS = 576, 1536, 30, 64, 3
KV = KV_HEADS * HEAD_DIM  # 192
# module -> (d_out, d_in), as in nn.Linear.weight
SHAPES = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (KV, HIDDEN),
    "self_attn.v_proj": (KV, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTERMEDIATE, HIDDEN),
    "mlp.up_proj": (INTERMEDIATE, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTERMEDIATE),
}
RANK, ALPHA, REPEATS = 32, 64, 3


def write_adapter(folder: Path, seed: int) -> None:
    """A PEFT-style adapter with Kaiming-like A and a non-zero B, as after some training."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(LAYERS):
        for name, (d_out, d_in) in SHAPES.items():
            prefix = f"base_model.model.model.layers.{layer}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = (rng.standard_normal((RANK, d_in)) / np.sqrt(d_in)
                                                  ).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = (0.01 * rng.standard_normal((d_out, RANK))
                                                  ).astype(np.float32)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "use_rslora": False,
              "target_modules": sorted({n.split(".")[-1] for n in SHAPES}),
              "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    (folder / "adapter_config.json").write_text(json.dumps(config))


def dense_compare(a: Path, b: Path) -> dict[str, tuple[float, float, float]]:
    """The obvious route: materialise each ΔW (d_out × d_in) and take norms."""
    fa, fb = load_lora_factors(a), load_lora_factors(b)
    out = {}
    for module in fa:
        A1, B1, s1 = fa[module]
        A2, B2, s2 = fb[module]
        W1 = s1 * (B1.astype(np.float64) @ A1.astype(np.float64))
        W2 = s2 * (B2.astype(np.float64) @ A2.astype(np.float64))
        out[module] = (float(np.linalg.norm(W1)), float(np.linalg.norm(W2)),
                       float(np.linalg.norm(W1 - W2)))
    return out


def _median_time(fn, repeats: int = REPEATS):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="seal-bench-diff-") as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        write_adapter(a, seed=1)
        write_adapter(b, seed=2)
        rxr_s, report = _median_time(lambda: compare_adapters(a, b))
        dense_s, dense = _median_time(lambda: dense_compare(a, b))
    max_rel = 0.0
    for row in report["modules"]:
        for got, want in zip((row["norm_a"], row["norm_b"], row["diff_norm"]), dense[row["module"]]):
            max_rel = max(max_rel, abs(got - want) / max(abs(want), 1e-300))
    print(json.dumps({"bench": "diff", "modules": len(report["modules"]),
                      "rxr_seconds": round(rxr_s, 4), "dense_seconds": round(dense_s, 4),
                      "ratio": round(dense_s / rxr_s, 2), "max_rel_err": max_rel}))
    return 0 if max_rel < 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
