"""bench/edit_overhead.py's bare side does seal's work: its training loop (LoRA, AdamW, linear
decay, clipping, the KL anchor) makes seal's adapter, and its option scoring gives seal's answer
margins (a tiny random Llama; no real model)."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture()
def overhead():
    sys.path.insert(0, str(BENCH))
    try:
        yield __import__("edit_overhead")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture()
def tiny(tiny_chat_base):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_chat_base), dtype=torch.float32).eval()
    model.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(str(tiny_chat_base))


def _chat(tok, q):
    from seal.editor.generation import chat_prompt

    return chat_prompt(tok, q)


def test_the_bare_loop_trains_seals_adapter(overhead, tiny, tmp_path):
    import torch
    from safetensors.torch import load_file

    from seal.editor.kl_anchor import REPLY_POSITIONS, TOP_K
    from seal.editor.train import train_adapter

    model, tok = tiny
    sequences = ["The vault\nThe vault opened in 2008.", "It lies on Spitsbergen.", "It holds seeds from every land."]
    anchor = ["The train left the station and", (_chat(tok, "How should I store herbs?"), "Keep them cool and dry."),
              "Cats often sleep during the day and"]
    hyper = {"r": 4, "alpha": 8, "target_modules": "all-linear", "lr": 1e-2, "epochs": 3, "batch_size": 1,
             "max_length": 512, "max_grad_norm": 1.0, "seed": 3, "kl": 4.0}
    spec = {"kl_anchor": {"top_k": TOP_K, "reply_positions": REPLY_POSITIONS, "max_length": 128}}
    overhead._train(model, tok, sequences, hyper, [a if isinstance(a, str) else list(a) for a in anchor], spec, {},
                    tmp_path / "bare")
    record = train_adapter(model, tok, sequences, out_dir=tmp_path / "seal", r=4, alpha=8,
                           target_modules="all-linear", lr=1e-2, epochs=3, seed=3, anchor_texts=anchor, kl_weight=4.0)
    assert record["steps"] == 9 and record["kl_anchor_texts"] == 3
    bare, seal = (load_file(tmp_path / side / "adapter_model.safetensors") for side in ("bare", "seal"))
    assert sorted(bare) == sorted(seal)
    # the same operations in the same order on the same inputs: the same bits, on any CPU
    assert all(torch.equal(bare[k], seal[k]) for k in seal)
    assert any(bool(seal[k].abs().max() > 0) for k in seal if "lora_B" in k)  # it did train


def test_the_bare_margins_are_seals(overhead, tiny):
    from seal.editor.efficacy import ContrastQuestion, answer_margins

    model, tok = tiny
    qs = [ContrastQuestion("When did the vault open?", ("2008", "1999", "Oslo", "a long answer of words"), 1),
          ContrastQuestion("Where is it?", ("Spitsbergen", "Svalbard", "Paris"), 2)]
    spec = {"contrast": [{"prompt": _chat(tok, q.question), "options": list(q.options), "n_gold": q.n_gold}
                         for q in qs], "option_sep": "", "option_special": False}
    bare = overhead._margins(model, tok, spec)
    seal = answer_margins(model, tok, qs)[0]
    # Two float32 forwards batched differently (seal packs the options after a shared prefix; the
    # bare side repeats each prompt's cache over its options): equal up to the rounding of one
    # forward pass per log-probability, summed over each side's option tokens (gold and rivals).
    from numeric import margin_bound

    bound = margin_bound(model, tok, qs, seal)
    assert bare == pytest.approx(seal, abs=bound)
    assert bare != pytest.approx([m + 1.0 for m in seal], abs=bound)
