"""Rank-space LoRA algebra must agree with the dense ΔW = s·B@A it stands for."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seal.registry import lora_math
from seal.registry.errors import UserError
from seal.registry.lora_math import (
    LoraFactors,
    compare_adapters,
    delta_diff_norm,
    delta_inner,
    delta_norm,
    load_lora_factors,
    lora_scale,
    read_safetensors,
    total_delta_norm,
)

REL = 1e-6


def _close(x: float, y: float, rel: float = REL) -> bool:
    return abs(x - y) <= rel * max(abs(x), abs(y), 1e-300)


def _factors(rng: np.random.Generator, d_out: int, d_in: int, r: int, dtype=np.float32):
    return rng.normal(size=(r, d_in)).astype(dtype), rng.normal(size=(d_out, r)).astype(dtype)


def _dense(A, B, s) -> np.ndarray:
    return float(s) * (B.astype(np.float64) @ A.astype(np.float64))


# ---------------------------------------------------------------- pure algebra


@pytest.mark.parametrize("d_out,d_in,r", [(7, 5, 1), (40, 24, 4), (64, 96, 16), (3, 50, 8)])
def test_delta_norm_matches_dense(d_out, d_in, r):
    rng = np.random.default_rng(d_out * 1000 + d_in + r)
    A, B = _factors(rng, d_out, d_in, r)
    s = 0.37
    assert _close(delta_norm(A, B, s), np.linalg.norm(_dense(A, B, s)))
    assert _close(delta_norm(A, B, -s), np.linalg.norm(_dense(A, B, s)))


@pytest.mark.parametrize("r1,r2", [(4, 4), (2, 16), (16, 3), (1, 1)])
def test_inner_and_diff_with_different_ranks(r1, r2):
    rng = np.random.default_rng(r1 * 31 + r2)
    A1, B1 = _factors(rng, 48, 32, r1)
    A2, B2 = _factors(rng, 48, 32, r2)
    s1, s2 = 2.0, 0.5
    W1, W2 = _dense(A1, B1, s1), _dense(A2, B2, s2)
    assert _close(delta_inner(A1, B1, s1, A2, B2, s2), float(np.sum(W1 * W2)))
    assert _close(delta_inner(A2, B2, s2, A1, B1, s1), float(np.sum(W1 * W2)))
    assert _close(delta_diff_norm(A1, B1, s1, A2, B2, s2), np.linalg.norm(W1 - W2))


def test_diff_norm_of_near_identical_updates_keeps_its_digits():
    # A child adapter a hair away from its parent: the naive ‖a‖²+‖b‖²−2⟨a,b⟩ loses this.
    rng = np.random.default_rng(1)
    A, B = _factors(rng, 64, 48, 8, dtype=np.float64)
    A2 = A + 1e-9 * rng.normal(size=A.shape)
    dense = np.linalg.norm(_dense(A, B, 1.0) - _dense(A2, B, 1.0))
    ours = delta_diff_norm(A, B, 1.0, A2, B, 1.0)
    assert _close(ours, dense, rel=1e-4)
    assert delta_diff_norm(A, B, 1.5, A, B, 1.5) <= 1e-12 * delta_norm(A, B, 1.5)


def test_zero_update_has_zero_norm():
    A = np.zeros((4, 10), np.float32)
    B = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    assert delta_norm(A, B, 2.0) == 0.0


# ---------------------------------------------------------------- scaling


def test_lora_scale_plain_rslora_and_patterns():
    cfg = {"r": 16, "lora_alpha": 32}
    assert lora_scale(cfg, "model.layers.0.self_attn.q_proj") == 2.0
    assert lora_scale({**cfg, "use_rslora": True}, "model.layers.0.self_attn.q_proj") == 8.0
    patterned = {**cfg, "rank_pattern": {"q_proj": 4}, "alpha_pattern": {r"layers\.1\.mlp\.up_proj": 2}}
    # rank from rank_pattern, alpha stays lora_alpha (as in PEFT)
    assert lora_scale(patterned, "model.layers.0.self_attn.q_proj") == 32 / 4
    assert lora_scale(patterned, "model.layers.1.mlp.up_proj") == 2 / 16
    assert lora_scale(patterned, "model.layers.0.mlp.up_proj") == 2.0
    # pattern must match on a dot boundary: "q_proj" must not match "xq_proj"
    assert lora_scale(patterned, "model.layers.0.xq_proj") == 2.0


# ---------------------------------------------------------------- files


def _write_adapter(folder: Path, config: dict, factors: dict[str, tuple[np.ndarray, np.ndarray]]):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (A, B) in factors.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(A)
        tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(B)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))


def test_compare_adapters_matches_dense_incl_one_sided_modules(tmp_path):
    rng = np.random.default_rng(7)
    shapes = {"model.layers.0.self_attn.q_proj": (24, 24), "model.layers.0.mlp.down_proj": (24, 40),
              "model.layers.1.self_attn.q_proj": (24, 24)}
    fa = {m: _factors(rng, *shape, 4) for m, shape in shapes.items()}
    fb = {m: _factors(rng, *shape, 8) for m, shape in shapes.items() if "layers.1" not in m}
    fb["model.layers.2.self_attn.v_proj"] = _factors(rng, 8, 24, 8)
    cfg_a = {"r": 4, "lora_alpha": 8}
    cfg_b = {"r": 8, "lora_alpha": 8, "use_rslora": True}
    _write_adapter(tmp_path / "a", cfg_a, fa)
    _write_adapter(tmp_path / "b", cfg_b, fb)

    report = compare_adapters(tmp_path / "a", tmp_path / "b")
    rows = {row["module"]: row for row in report["modules"]}
    assert set(rows) == set(fa) | set(fb)
    sa, sb = 8 / 4, 8 / math.sqrt(8)
    dense_a = {m: _dense(A, B, sa) for m, (A, B) in fa.items()}
    dense_b = {m: _dense(A, B, sb) for m, (A, B) in fb.items()}
    tot = np.zeros(4)
    for m, row in rows.items():
        Wa = dense_a.get(m)
        Wb = dense_b.get(m)
        zero = np.zeros_like(Wa if Wa is not None else Wb)
        Wa = zero if Wa is None else Wa
        Wb = zero if Wb is None else Wb
        assert _close(row["norm_a"], np.linalg.norm(Wa)) or row["norm_a"] == np.linalg.norm(Wa) == 0
        assert _close(row["norm_b"], np.linalg.norm(Wb)) or row["norm_b"] == np.linalg.norm(Wb) == 0
        assert _close(row["diff_norm"], np.linalg.norm(Wa - Wb))
        if m in fa and m in fb:
            cos = np.sum(Wa * Wb) / (np.linalg.norm(Wa) * np.linalg.norm(Wb))
            assert abs(row["cosine"] - cos) < 1e-9
        else:
            assert row["cosine"] is None
        assert row["layer"] == int(m.split(".")[2])
        tot += [np.sum(Wa**2), np.sum(Wb**2), np.sum((Wa - Wb) ** 2), np.sum(Wa * Wb)]
    total = report["total"]
    assert _close(total["norm_a"], math.sqrt(tot[0]))
    assert _close(total["norm_b"], math.sqrt(tot[1]))
    assert _close(total["diff_norm"], math.sqrt(tot[2]))
    assert abs(total["cosine"] - tot[3] / math.sqrt(tot[0] * tot[1])) < 1e-9
    assert [layer["layer"] for layer in report["layers"]] == [0, 1, 2]
    assert [layer["n_modules"] for layer in report["layers"]] == [2, 1, 1]
    layer0 = report["layers"][0]
    assert _close(layer0["diff_norm"], math.sqrt(rows["model.layers.0.self_attn.q_proj"]["diff_norm"] ** 2
                                                + rows["model.layers.0.mlp.down_proj"]["diff_norm"] ** 2))
    assert _close(total_delta_norm(tmp_path / "a"), math.sqrt(tot[0]))

    # b=None is the zero adapter: the diff is a's own size
    alone = compare_adapters(tmp_path / "a")
    assert _close(alone["total"]["diff_norm"], math.sqrt(tot[0]))
    assert alone["total"]["norm_b"] == 0.0 and alone["total"]["cosine"] is None

    # the (config, safetensors path) form and already-loaded factors give the same answer
    pair = (json.loads((tmp_path / "b/adapter_config.json").read_text()),
            tmp_path / "b/adapter_model.safetensors")
    again = compare_adapters(load_lora_factors(tmp_path / "a"), pair)
    assert again["total"] == pytest.approx(total)
    json.dumps(report)  # JSON-ready as it is


def test_bad_adapter_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="adapter_config.json"):
        load_lora_factors(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(UserError, match="safe_serialization"):
        load_lora_factors(tmp_path)
    rng = np.random.default_rng(0)
    _write_adapter(tmp_path / "dora", {"r": 4, "lora_alpha": 4, "use_dora": True},
                   {"model.layers.0.q_proj": _factors(rng, 8, 8, 4)})
    with pytest.raises(UserError, match="DoRA"):
        load_lora_factors(tmp_path / "dora")


def test_module_does_not_import_torch():
    code = ("import sys, seal.registry.lora_math; "
            "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- a real PEFT adapter


def _tiny_llama():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=100)
    return transformers.LlamaForCausalLM(config)


def _peft_adapter(tmp_path: Path, name: str, seed: int, **lora_kwargs):
    """Save a PEFT adapter and return ({module: dense ΔW}, folder), ΔW from merge_and_unload."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    base = _tiny_llama()
    base_weights = {k: v.detach().clone().double() for k, v in base.state_dict().items()}
    torch.manual_seed(seed)
    model = peft.get_peft_model(base, peft.LoraConfig(init_lora_weights=False, **lora_kwargs))
    folder = tmp_path / name
    model.save_pretrained(folder)
    merged = model.merge_and_unload().state_dict()
    deltas = {}
    for key, value in merged.items():
        d = value.detach().double() - base_weights[key]
        if key.endswith(".weight") and torch.count_nonzero(d):
            deltas[key[: -len(".weight")]] = d.numpy()
    return deltas, folder


def test_real_peft_adapters_match_merged_weights(tmp_path):
    da, folder_a = _peft_adapter(tmp_path, "a", seed=1, target_modules="all-linear", r=4,
                                 lora_alpha=8, rank_pattern={"down_proj": 2},
                                 alpha_pattern={r"layers\.1\.self_attn\.v_proj": 3})
    db, folder_b = _peft_adapter(tmp_path, "b", seed=2, r=8, lora_alpha=4, use_rslora=True,
                                 target_modules=["q_proj", "v_proj", "embed_tokens"])
    assert len(da) == 2 * 7 and "model.embed_tokens" in db

    factors_a = load_lora_factors(folder_a)
    assert set(factors_a) == set(da)
    assert factors_a["model.layers.0.mlp.down_proj"].A.shape[0] == 2
    for module, W in da.items():
        assert _close(delta_norm(*factors_a[module]), np.linalg.norm(W), rel=1e-5)

    report = compare_adapters(folder_a, folder_b)
    for row in report["modules"]:
        Wa = da.get(row["module"])
        Wb = db.get(row["module"])
        Wa = np.zeros_like(Wb) if Wa is None else Wa
        Wb = np.zeros_like(Wa) if Wb is None else Wb
        # float32 factors in the file vs the float32 merged weights: 1e-5 relative, not 1e-6
        assert _close(row["norm_a"], np.linalg.norm(Wa), rel=1e-5) or row["norm_a"] == 0
        assert _close(row["norm_b"], np.linalg.norm(Wb), rel=1e-5) or row["norm_b"] == 0
        assert _close(row["diff_norm"], np.linalg.norm(Wa - Wb), rel=1e-4)
    assert _close(report["total"]["diff_norm"],
                  math.sqrt(sum(np.sum((da.get(m, 0) - db.get(m, 0)) ** 2) for m in set(da) | set(db))),
                  rel=1e-4)


def test_bf16_adapter_is_read_without_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    _, folder = _peft_adapter(tmp_path, "f32", seed=3, target_modules=["q_proj"], r=4, lora_alpha=4)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    bf16 = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    out = tmp_path / "bf16"
    out.mkdir()
    from safetensors.torch import save_file

    save_file(bf16, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text((folder / "adapter_config.json").read_text())

    ours = read_safetensors(out / "adapter_model.safetensors")
    for key, value in bf16.items():
        assert ours[key].dtype == np.float32
        np.testing.assert_array_equal(ours[key], value.float().numpy())
    factors = load_lora_factors(out)
    assert len(factors) == 2 and all(isinstance(f, LoraFactors) for f in factors.values())


def test_reader_accepts_mixed_dtypes(tmp_path):
    from safetensors.numpy import save_file

    arrays = {"a": np.arange(6, dtype=np.float16).reshape(2, 3), "b": np.ones(4, np.int64)}
    save_file(arrays, str(tmp_path / "x.safetensors"))
    got = read_safetensors(tmp_path / "x.safetensors")
    assert got["a"].dtype == np.float16 and np.array_equal(got["a"], arrays["a"])
    assert np.array_equal(got["b"], arrays["b"])
    assert lora_math.read_safetensors(tmp_path / "x.safetensors", keys=["b"]).keys() == {"b"}


def test_compare_adapters_near_identical_child_is_accurate():
    # A child a hair away from its parent goes through the cancellation-safe path.
    rng = np.random.default_rng(3)
    A, B = _factors(rng, 32, 24, 4, dtype=np.float64)
    A2 = A + 1e-8 * rng.normal(size=A.shape)
    module = "model.layers.0.self_attn.q_proj"
    report = compare_adapters({module: LoraFactors(A, B, 2.0)}, {module: LoraFactors(A2, B, 2.0)})
    dense = np.linalg.norm(_dense(A, B, 2.0) - _dense(A2, B, 2.0))
    assert _close(report["modules"][0]["diff_norm"], dense, rel=1e-4)
    same = compare_adapters({module: LoraFactors(A, B, 2.0)}, {module: LoraFactors(A, B, 2.0)})
    assert same["total"]["diff_norm"] <= 1e-12 * same["total"]["norm_a"]
    assert same["total"]["cosine"] == pytest.approx(1.0)


def test_adapters_of_different_bases_are_refused():
    rng = np.random.default_rng(0)
    m = "model.layers.0.self_attn.q_proj"
    a = {m: LoraFactors(*_factors(rng, 8, 8, 2), 1.0)}
    b = {m: LoraFactors(*_factors(rng, 16, 8, 2), 1.0)}
    with pytest.raises(UserError, match="different base"):
        compare_adapters(a, b)
