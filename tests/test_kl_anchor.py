"""The KL anchor: zero at the parent, and it holds the adapter nearer the parent on its texts."""

from __future__ import annotations

import math


def _kl_on(model, tok, folder, text):
    import torch

    from seal.editor.attach import attached

    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        parent = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        with attached(model, folder) as m:
            child = torch.log_softmax(m(input_ids=ids).logits[0].float(), -1)
    return float((parent.exp() * (parent - child)).sum(-1).mean())


def test_the_anchor_is_zero_at_the_parent_and_holds_the_adapter_near_it(tiny_chat_base, tmp_path):
    from peft import LoraConfig, get_peft_model

    from seal.editor.base import load_base
    from seal.editor.kl_anchor import Anchor
    from seal.editor.train import detach_adapters, train_adapter

    base = load_base(str(tiny_chat_base), cache_dir=tmp_path / "cache", device="cpu")
    model, tok = base.model, base.tokenizer
    neutral = ["The train left the station and the town was quiet again.",
               "Rivers usually begin in the mountains and run down to the sea."]
    # a fresh LoRA is the parent (its B is zero): the anchor reads no divergence before a step
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    try:
        anchor = Anchor.record(peft, tok, neutral)
        assert len(anchor.snapshots) == 2
        assert abs(float(anchor.kl(peft, 0).detach())) <= 1e-4 * math.log(len(tok))
    finally:
        detach_adapters(peft)
    passage = ["Zorblat\nThe violet Zorblat bridge was built in 1832 by Ada Lindqvist."] * 6
    free = train_adapter(model, tok, passage, out_dir=tmp_path / "free", lr=1e-2, epochs=4, seed=0)
    held = train_adapter(model, tok, passage, out_dir=tmp_path / "held", lr=1e-2, epochs=4, seed=0,
                         anchor_texts=neutral, kl_weight=5.0)
    assert "kl_weight" not in free and held["kl_weight"] == 5.0 and held["kl_anchor_texts"] == 2
    drift_free = sum(_kl_on(model, tok, tmp_path / "free", t) for t in neutral)
    drift_held = sum(_kl_on(model, tok, tmp_path / "held", t) for t in neutral)
    assert drift_held < drift_free


def test_seal_edit_with_kl_anchors_the_replay_lines_and_records_it(tmp_path, tiny_chat_record, monkeypatch):
    import json

    from conftest import Seal, make_registry
    from seal.editor import placebo
    from seal.registry.policy import set_policy
    from seal.registry.repo import Registry

    monkeypatch.setenv("SEAL_CACHE", str(tmp_path / "cache" / "bases"))
    monkeypatch.setattr(placebo, "_IN_PROCESS", {})
    reg = make_registry(tmp_path, tiny_chat_record)
    set_policy(reg, "efficacy_margin_gain_min", "1000", reason="tests: a rule no edit passes")
    reg.close()
    passage = {"title": "Zorblat", "context": "The first bridge over the Zorblat was built in 1832 by Ada Lindqvist.",
               "questions": [{"question": "Who built the first bridge over the Zorblat?", "answer": "Ada Lindqvist"}]}
    (tmp_path / "passage.json").write_text(json.dumps(passage))
    seal = Seal(tmp_path, {"SEAL_ACTOR": "tester"})
    out = json.loads(seal("edit", "--passage", "passage.json", "--epochs", "1", "--max-tokens", "16", "--kl", "0.5",
                          "--no-track", "--json", check=False).stdout)
    shown = seal.json("show", out["candidates"][0]["id"])
    train = shown["train"]
    assert train["kl_weight"] == 0.5 and train["kl_anchor_texts"] >= 1
    assert train["hyperparameters"]["kl"] == 0.5
    # the replay lines anchor the KL and are not trained on
    edit = json.loads(Registry.open(tmp_path).store.get(shown["self_edit"])) if isinstance(shown["self_edit"], str) \
        else shown["self_edit"]
    assert edit["replay"] and not set(edit["replay"]) & set(edit["sequences"])
    bad = seal("edit", "--passage", "passage.json", "--kl", "-1", check=False)
    assert bad.returncode == 2 and "--kl" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
