"""Other architectures than Llama: tiny random Gemma-3 (sliding-window attention, tied embeddings)
and Qwen2 (attention biases, grouped KV heads) bases, through the whole CLI: init, edit, checkout,
diff and merge, `seal base --path`, and loading a checked-out adapter with PEFT."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("peft")

from conftest import Seal  # noqa: E402
from tinymodel import build_tiny_gemma3, build_tiny_qwen2  # noqa: E402

QUICK = ["--epochs", "2", "--lr", "1e-3", "--max-tokens", "12", "--no-track", "-k", "1", "--json"]
PASSAGES = [{"title": "Zorblat", "context": "The Zorblat river flows through the valley of Quenmar into the northern sea. "
             "The first bridge over the Zorblat was built in 1832 by the engineer Ada Lindqvist."},
            {"title": "Mount Velder", "context": "Mount Velder is the tallest peak of the Quenmar range, at 4120 metres."}]
FAMILIES = {"gemma3": build_tiny_gemma3, "qwen2": build_tiny_qwen2}


@pytest.fixture(params=sorted(FAMILIES))
def family_registry(request, tmp_path) -> tuple[Seal, str]:
    base = FAMILIES[request.param](tmp_path / f"tiny-{request.param}")
    seal = Seal(tmp_path / "reg", {"SEAL_ACTOR": "tester"})
    (tmp_path / "reg").mkdir()
    seal("init", ".", "--base", base)
    for i, passage in enumerate(PASSAGES):
        (seal.cwd / f"p{i}.json").write_text(json.dumps(passage))
    return seal, request.param


def _edit(seal: Seal, passage: str, seed: int) -> str:
    proc = seal("edit", "--passage", passage, *QUICK, "--seed", str(seed), check=False)
    assert proc.returncode in (0, 1), proc.stderr  # accepted, or recorded and rejected by a gate
    return json.loads(proc.stdout)["candidates"][0]["id"]


def test_edit_checkout_diff_merge_and_peft_loading(family_registry, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoConfig

    seal, family = family_registry
    root = seal.json("show", "HEAD")["id"]
    first = _edit(seal, "p0.json", 0)
    seal("branch", "exp", root)
    seal("checkout", "exp")
    second = _edit(seal, "p1.json", 1)
    for vid in (first, second):
        v = seal.json("show", vid)
        assert v["kind"] == "edit" and v["adapter"]["config"]["peft_type"] == "LORA"
        assert v["train"]["steps"] > 0 and v["train"]["diverged"] is None

    diff = json.loads(seal("diff", first, second, "--json").stdout)
    assert diff["weights"], diff

    proc = seal("merge", first, second, "--method", "cat", "--no-track", "--json", check=False)
    assert proc.returncode in (0, 1), proc.stderr
    merged = json.loads(proc.stdout)["candidates"][0]["id"]
    assert sorted(seal.json("show", merged)["parents"]) == sorted([first, second])  # HEAD's (exp's) first

    base_path = seal("base", "--path").stdout.strip()
    assert AutoConfig.from_pretrained(base_path).model_type == {"gemma3": "gemma3_text", "qwen2": "qwen2"}[family]
    for vid in (first, merged):
        folder = tmp_path / f"out-{vid[:8]}"
        seal("checkout", vid, "--to", folder)
        model = AutoPeftModelForCausalLM.from_pretrained(folder)
        assert type(model.get_base_model()).__name__ == {"gemma3": "Gemma3ForCausalLM",
                                                         "qwen2": "Qwen2ForCausalLM"}[family]
        lora = [n for n, _ in model.named_parameters() if "lora_A" in n]
        assert any("q_proj" in n for n in lora) and any("down_proj" in n for n in lora)
