"""Checking PEFT LoRA folders without torch: real adapters pass, each broken one is one UserError."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seal.registry.adapters import (
    check_adapter_bytes,
    LoraModule,
    linear_shapes,
    read_adapter_folder,
    safetensors_header,
    tensor_array,
)
from seal.registry.errors import UserError

Q0 = "base_model.model.model.layers.0.self_attn.q_proj"
V1 = "base_model.model.model.layers.1.self_attn.v_proj"


# ---------------------------------------------------------------- fixtures: a tiny base and real adapters

def _tiny_base(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def _peft_adapter(base: Path, out: Path, **lora) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(init_lora_weights=False, **lora))
    model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("adapters")
    base = _tiny_base(root / "base")
    plain = _peft_adapter(base, root / "plain", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    patterned = _peft_adapter(base, root / "patterned", r=4, lora_alpha=8,
                              target_modules=["q_proj", "v_proj", "down_proj"],
                              rank_pattern={"v_proj": 2}, alpha_pattern={"down_proj": 2}, layers_to_transform=[1])
    embedding = _peft_adapter(base, root / "embedding", r=2, lora_alpha=2, target_modules=["embed_tokens"])
    return {"base": base, "plain": plain, "patterned": patterned, "embedding": embedding,
            "shapes": linear_shapes(base)}


# ---------------------------------------------------------------- helpers that break a copy one way

def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path: Path, header: dict | bytes, data: bytes) -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _edit_header(fn):
    def mutate(folder: Path) -> None:
        weights = folder / "adapter_model.safetensors"
        header, data = _split(weights)
        fn(header)
        _write(weights, header, data)
    return mutate


def _edit_tensors(fn):
    """Rewrite the tensors through safetensors' own writer, so the layout itself stays valid."""
    def mutate(folder: Path) -> None:
        from safetensors.numpy import load_file, save_file

        weights = folder / "adapter_model.safetensors"
        tensors = load_file(str(weights))
        fn(tensors)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(weights))
    return mutate


def _edit_config(fn):
    def mutate(folder: Path) -> None:
        cfg = folder / "adapter_config.json"
        config = json.loads(cfg.read_text())
        fn(config)
        cfg.write_text(json.dumps(config))
    return mutate


def _config_text(old: str, new: str | bytes):
    """Replace raw text in the config: for what json.dumps would never write."""
    def mutate(folder: Path) -> None:
        cfg = folder / "adapter_config.json"
        raw = cfg.read_bytes()
        assert old.encode() in raw
        cfg.write_bytes(raw.replace(old.encode(), new if isinstance(new, bytes) else new.encode(), 1))
    return mutate


def _raw_weights(fn):
    def mutate(folder: Path) -> None:
        weights = folder / "adapter_model.safetensors"
        weights.write_bytes(fn(weights.read_bytes()))
    return mutate


def _header_text(old: bytes, new: bytes):
    def mutate(folder: Path) -> None:
        weights = folder / "adapter_model.safetensors"
        raw = weights.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        assert old in raw[8:8 + n]
        _write(weights, raw[8:8 + n].replace(old, new, 1), raw[8 + n:])
    return mutate


def _set(mapping: dict, key: str, value) -> None:
    mapping[key] = value


def _to_bf16_with_inf(folder: Path) -> None:
    from safetensors.numpy import load_file

    weights = folder / "adapter_model.safetensors"
    header, data = {}, b""
    for name, value in sorted(load_file(str(weights)).items()):
        value = value.astype(np.float32)
        if name == f"{Q0}.lora_B.weight":
            value[0, 0] = np.inf
        raw = (value.view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    _write(weights, header, data)


def _pop(key: str):
    return _edit_tensors(lambda t: t.pop(key))


def _rename(old: str, new: str):
    return _edit_tensors(lambda t: t.__setitem__(new, t.pop(old)))


HOSTILE = {
    # the tensors against the config and the base
    "lora_A without lora_B": (_pop(f"{Q0}.lora_B.weight"), "has no lora_B tensor"),
    "lora_B without lora_A": (_pop(f"{V1}.lora_A.weight"), "has no lora_A tensor"),
    "NaN weight": (_edit_tensors(lambda t: t[f"{Q0}.lora_A.weight"].__setitem__((0, 0), np.nan)), "NaN or infinite"),
    "inf in bf16": (_to_bf16_with_inf, "NaN or infinite"),
    "shape does not fit base": (_edit_tensors(lambda t: _set(t, f"{Q0}.lora_A.weight", np.ones((4, 48), np.float32))),
                                "trained on another base"),
    "module not in base": (_edit_tensors(lambda t: [t.__setitem__(k.replace("layers.1.", "layers.7."), t.pop(k))
                                                    for k in list(t) if "layers.1." in k]), "not in the base model"),
    "rank differs from config": (_edit_config(lambda c: _set(c, "r", 8)), "the config's rank"),
    "A and B ranks differ": (_edit_tensors(lambda t: _set(t, f"{Q0}.lora_B.weight", np.ones((64, 3), np.float32))),
                             "the config's rank"),
    "3-D factor": (_edit_tensors(lambda t: _set(t, f"{Q0}.lora_A.weight", np.ones((4, 64, 1), np.float32))), "2-D"),
    "integer factor": (_edit_tensors(lambda t: _set(t, f"{Q0}.lora_A.weight", np.ones((4, 64), np.int32))), "dtype I32"),
    "unexpected tensor": (_edit_tensors(lambda t: _set(t, "base_model.model.lm_head.weight", np.ones((96, 64), np.float32))),
                          "not a LoRA factor"),
    "base weight copy": (_edit_tensors(lambda t: _set(t, "base_model.model.model.embed_tokens.base_layer.weight",
                                                      np.ones((96, 64), np.float32))), "save_embedding_layers=False"),
    "adapter name left in key": (_rename(f"{Q0}.lora_A.weight", f"{Q0}.lora_A.default.weight"), "not a LoRA factor"),
    "module left out": (_edit_tensors(lambda t: [t.pop(k) for k in list(t) if k.startswith(V1)]),
                        "selects 1 base module(s) with no LoRA tensors"),
    "target_modules does not select it": (_edit_config(lambda c: _set(c, "target_modules", ["q_proj"])),
                                          "target_modules does not select it"),
    "no LoRA tensors": (_raw_weights(lambda raw: struct.pack("<Q", 2) + b"{}"), "holds no lora_A/lora_B tensors"),
    # the safetensors layout
    "dtype EVIL": (_edit_header(lambda h: h[f"{Q0}.lora_A.weight"].__setitem__("dtype", "EVIL")), "unknown dtype 'EVIL'"),
    "data_offsets strings": (_edit_header(lambda h: h[f"{Q0}.lora_A.weight"].__setitem__("data_offsets", ["a", "b"])),
                             "data_offsets"),
    "negative shape": (_edit_header(lambda h: h[f"{Q0}.lora_A.weight"].__setitem__("shape", [-4, -64])), "shape"),
    "span differs from shape": (_edit_header(lambda h: h[f"{Q0}.lora_A.weight"].__setitem__("shape", [4, 63])), "spans"),
    # A [4, 64] and B [64, 4] are the same size: B now reads A's bytes
    "overlapping tensors": (_edit_header(lambda h: h[f"{Q0}.lora_B.weight"].__setitem__(
        "data_offsets", h[f"{Q0}.lora_A.weight"]["data_offsets"])), "overlaps"),
    "stray bytes": (_raw_weights(lambda raw: raw + b"\0" * 16), "stray bytes"),
    "truncated": (_raw_weights(lambda raw: raw[: len(raw) // 2]), "truncated"),
    "header length 2**62": (_raw_weights(lambda raw: struct.pack("<Q", 2**62) + raw[8:]), "header length"),
    "shorter than 8 bytes": (_raw_weights(lambda raw: raw[:3]), "shorter than 8 bytes"),
    "header not JSON": (_raw_weights(lambda raw: raw[:8] + b"#" * struct.unpack("<Q", raw[:8])[0]
                                     + raw[8 + struct.unpack("<Q", raw[:8])[0]:]), "not valid JSON"),
    "header holds NaN": (_header_text(b'"shape":[4,64]', b'"shape":[NaN,64]'), "holds NaN"),
    "metadata not strings": (_edit_header(lambda h: _set(h, "__metadata__", {"format": 1})), "__metadata__"),
    # adapter_config.json
    "config NaN": (_config_text('"lora_alpha": 8', '"lora_alpha": NaN'), "holds NaN"),
    "config Infinity": (_config_text('"lora_alpha": 8', '"lora_alpha": Infinity'), "holds Infinity"),
    "config -Infinity": (_config_text('"lora_alpha": 8', '"lora_alpha": -Infinity'), "holds -Infinity"),
    "config 2**70": (_config_text('"r": 4', f'"r": {2**70}'), "beyond 2**53"),
    "config 1e999": (_config_text('"lora_alpha": 8', '"lora_alpha": 1e999'), "overflows"),
    "config not UTF-8": (_config_text('"LORA"', b'"LOR\xff\xfe"'), "not UTF-8"),
    "config not an object": (lambda f: (f / "adapter_config.json").write_text("[1, 2]"), "not a JSON object"),
    "config not JSON": (lambda f: (f / "adapter_config.json").write_text("{not json"), "not valid JSON"),
    "config key twice": (_config_text('"r": 4', '"r": 4, "r": 0'), "twice"),
    "config lone surrogate": (_config_text('"peft_version": "', '"peft_version": "\\ud800'), "lone surrogate"),
    "config nested deep": (_config_text('"eva_config": null', '"eva_config": ' + "[" * 100_000 + "]" * 100_000),
                           "nested"),
    "config too large": (lambda f: (f / "adapter_config.json").write_text("{}" + " " * (2 << 20)), "too large"),
    "r = 0": (_edit_config(lambda c: _set(c, "r", 0)), "r is 0"),
    "r = 5000": (_edit_config(lambda c: _set(c, "r", 5000)), "r is 5000"),
    "r a string": (_edit_config(lambda c: _set(c, "r", "4")), "r is '4'"),
    "lora_alpha negative": (_edit_config(lambda c: _set(c, "lora_alpha", -8)), "lora_alpha is -8"),
    "lora_alpha true": (_edit_config(lambda c: _set(c, "lora_alpha", True)), "lora_alpha is True"),
    "prefix tuning": (_edit_config(lambda c: _set(c, "peft_type", "PREFIX_TUNING")), "LoRA adapters only"),
    "DoRA": (_edit_config(lambda c: _set(c, "use_dora", True)), "DoRA"),
    "bias all": (_edit_config(lambda c: _set(c, "bias", "all")), "bias"),
    "modules_to_save": (_edit_config(lambda c: _set(c, "modules_to_save", ["lm_head"])), "modules_to_save"),
    "PiSSA init": (_edit_config(lambda c: _set(c, "init_lora_weights", "pissa")), "changes the base weights"),
    "target_modules an int": (_edit_config(lambda c: _set(c, "target_modules", 5)), "target_modules"),
    "target_modules missing": (_edit_config(lambda c: c.pop("target_modules")), "target_modules"),
    "target_modules regex bomb": (_edit_config(lambda c: _set(c, "target_modules", "(a+)+$")), "nests quantifiers"),
    "target_modules bad regex": (_edit_config(lambda c: _set(c, "target_modules", "q_proj(")), "regular expression"),
    "rank_pattern a list": (_edit_config(lambda c: _set(c, "rank_pattern", ["q_proj"])), "rank_pattern"),
    "rank_pattern rank 0": (_edit_config(lambda c: _set(c, "rank_pattern", {"q_proj": 0})), "rank_pattern"),
    "use_rslora a string": (_edit_config(lambda c: _set(c, "use_rslora", "yes")), "use_rslora"),
    "lora_dropout 7": (_edit_config(lambda c: _set(c, "lora_dropout", 7)), "lora_dropout"),
    # the folder
    "pickle weights": (lambda f: (f / "adapter_model.bin").write_bytes(b"\x80\x04pickle"), "pickle"),
    "no safetensors": (lambda f: (f / "adapter_model.safetensors").unlink(), "adapter_model.safetensors"),
    "no config": (lambda f: (f / "adapter_config.json").unlink(), "adapter_config.json"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_adapter_is_one_user_error(tiny, tmp_path, case):
    mutate, needle = HOSTILE[case]
    folder = tmp_path / "adapter"
    shutil.copytree(tiny["plain"], folder)
    mutate(folder)
    with pytest.raises(UserError) as caught:  # any other exception type fails the test
        read_adapter_folder(folder, base_shapes=tiny["shapes"])
    message = str(caught.value)
    assert needle in message and "\n" not in message, message


def test_missing_or_wrong_paths(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_adapter_folder(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        read_adapter_folder(tmp_path / "file")
    with pytest.raises(UserError, match="cannot be read"):
        safetensors_header(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------- what passes

def test_real_adapters_pass_and_fit_the_base(tiny):
    adapter = read_adapter_folder(tiny["plain"], base_shapes=tiny["shapes"])
    assert adapter.config["r"] == 4 and adapter.weights == tiny["plain"] / "adapter_model.safetensors"
    assert sorted(adapter.modules) == [f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    v = adapter.modules["model.layers.0.self_attn.v_proj"]
    assert (v.kind, v.r, v.in_features, v.out_features) == ("linear", 4, 64, 32)  # 2 kv heads of 16

    # rank_pattern, layers_to_transform and an embedding, as PEFT writes them
    patterned = read_adapter_folder(tiny["patterned"], base_shapes=tiny["shapes"]).modules
    assert {m.name: (m.kind, m.r, m.in_features, m.out_features) for m in patterned.values()} == {
        "model.layers.1.self_attn.q_proj": ("linear", 4, 64, 64),
        "model.layers.1.self_attn.v_proj": ("linear", 2, 64, 32),
        "model.layers.1.mlp.down_proj": ("linear", 4, 128, 64),
    }
    embedding = read_adapter_folder(tiny["embedding"], base_shapes=tiny["shapes"]).modules
    assert list(embedding.values()) == [LoraModule("model.embed_tokens", "embedding", 2, 96, 64)]


def test_check_adapter_bytes_on_a_blob(tiny):
    config = json.loads((tiny["plain"] / "adapter_config.json").read_text())
    blob = (tiny["plain"] / "adapter_model.safetensors").read_bytes()
    checked = check_adapter_bytes(config, blob, tiny["shapes"], weights_where="the adapter of 3f2a9c1b")
    assert len(checked.modules) == 4 and checked.settings.r == 4
    # as stored in JSON: shapes are lists
    as_json = json.loads(json.dumps(tiny["shapes"]))
    assert check_adapter_bytes(config, blob, as_json).modules == checked.modules

    with pytest.raises(UserError, match="JSON does not allow"):
        check_adapter_bytes({**config, "lora_alpha": float("nan")}, blob)
    with pytest.raises(UserError, match="beyond 2\\*\\*53"):
        check_adapter_bytes({**config, "r": 2**60}, blob)
    with pytest.raises(UserError, match="the adapter of 3f2a9c1b is truncated"):
        check_adapter_bytes(config, blob[:-5], weights_where="the adapter of 3f2a9c1b")
    with pytest.raises(UserError, match="malformed"):
        check_adapter_bytes(config, blob, {"model.layers.0.self_attn.q_proj": "64x64"})


def test_linear_shapes_of_the_tiny_base(tiny):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny["base"])
    linear = {name: (m.out_features, m.in_features) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear)}
    shapes = tiny["shapes"]
    assert "lm_head" in linear and not any(k.startswith("lm_head") for k in safetensors_header(
        tiny["base"] / "model.safetensors").tensors)  # tied: saved only as the embedding
    assert {k: v for k, v in shapes.items() if k in linear} == linear
    assert set(shapes) - set(linear) == {"model.embed_tokens"} and shapes["model.embed_tokens"] == (96, 64)
    with pytest.raises(UserError, match="no \\*.safetensors"):
        linear_shapes(tiny["plain"].parent / "nowhere")


def test_bf16_is_widened_exactly(tiny, tmp_path):
    folder = tmp_path / "bf16"
    shutil.copytree(tiny["plain"], folder)
    weights = folder / "adapter_model.safetensors"
    f32 = {name: tensor_array(weights, safetensors_header(weights), name) for name in safetensors_header(weights).tensors}
    header, data = {}, b""
    for name, value in sorted(f32.items()):
        raw = (value.view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    _write(weights, header, data)
    adapter = read_adapter_folder(folder, base_shapes=tiny["shapes"])
    got = tensor_array(weights, adapter.adapter.header, f"{Q0}.lora_A.weight")
    expect = (f32[f"{Q0}.lora_A.weight"].view(np.uint32) & 0xFFFF0000).view(np.float32)
    assert got.dtype == np.float32 and np.array_equal(got, expect)


def test_random_corruption_is_only_ever_a_user_error(tiny, tmp_path):
    """Flip bytes of the header and of the config: each try passes or is a UserError, nothing else."""
    rng = np.random.default_rng(0)
    weights = (tiny["plain"] / "adapter_model.safetensors").read_bytes()
    config = (tiny["plain"] / "adapter_config.json").read_bytes()
    (n,) = struct.unpack("<Q", weights[:8])
    folder = tmp_path / "fuzz"
    shutil.copytree(tiny["plain"], folder)
    refused = 0
    for i in range(300):
        w, c = bytearray(weights), bytearray(config)
        target, limit = (w, 8 + n) if i % 2 else (c, len(c))
        for pos in rng.integers(0, limit, size=rng.integers(1, 4)):
            target[pos] = int(rng.integers(0, 256))
        (folder / "adapter_model.safetensors").write_bytes(bytes(w))
        (folder / "adapter_config.json").write_bytes(bytes(c))
        try:
            read_adapter_folder(folder, base_shapes=tiny["shapes"])
        except UserError as e:
            refused += 1
            assert "\n" not in str(e)
    assert refused > 100


def test_module_imports_no_torch():
    code = ("import sys, seal.registry.adapters, seal.registry.lora_math; "
            "bad = {'torch', 'transformers', 'peft'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("dtype,np_dtype", [("F16", "<f2"), ("F32", "<f4"), ("F64", "<f8"), ("BF16", None)])
def test_non_finite_agrees_with_numpy(dtype, np_dtype):
    import numpy as np

    from seal.registry.adapters import non_finite

    rng = np.random.default_rng(0)
    values = rng.standard_normal(4097).astype(np.float32) * np.float32(1e3)
    for bad in (None, np.nan, np.inf, -np.inf):
        x = values.copy()
        if bad is not None:
            x[1234] = bad
        raw = (x.view("<u4") >> 16).astype("<u2").tobytes() if np_dtype is None else x.astype(np_dtype).tobytes()
        assert non_finite(raw, dtype) == (bad is not None), (dtype, bad)
    assert not non_finite(np.array([65504.0, -65504.0, 6e-8], "<f2").tobytes(), "F16")  # largest and tiniest finite halves
