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
    ran = seal("edit", "--passage", "passage.json", "--epochs", "1", "--max-tokens", "16", "--kl", "0.5",
               "--no-track", "--json", check=False)
    assert ran.stdout, ran.stderr
    out = json.loads(ran.stdout)
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


def test_the_safety_anchors_are_no_xstest_prompt_and_every_kind_is_visited_early():
    import csv
    import io
    from pathlib import Path

    from seal.editor.replay import CHAT_ANCHORS, SAFETY_ANCHORS, anchor_lines
    from seal.editor.safety import load_xstest_sample

    def runs(text, n=6):
        words = [w.strip("?.,!'").lower() for w in text.split()]
        return {tuple(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))}

    prompts = [r["prompt"] for r in load_xstest_sample()]
    published = Path(__file__).resolve().parents[2] / "shared" / "data" / "xstest_prompts.csv"
    if published.is_file():  # beside the project's checkout; a /tmp clone has the shipped sample only
        prompts += [r["prompt"] for r in csv.DictReader(io.StringIO(published.read_text(encoding="utf-8")))]
    # no anchor shares a run of six words with a probe: they are held, never judged
    for anchor in SAFETY_ANCHORS + CHAT_ANCHORS:
        assert all(not runs(anchor) & runs(p) for p in prompts), anchor
    replies = [f"chat {i}" for i in range(len(CHAT_ANCHORS))] + [f"safety {i}" for i in range(len(SAFETY_ANCHORS))]
    order = anchor_lines(["replay 0", "replay 1"], replies)
    assert sorted(order) == sorted(["replay 0", "replay 1", *replies])
    assert [t.split()[0] for t in order[:3]] == ["replay", "chat", "safety"]


def test_chat_replies_are_the_bases_and_written_once_per_base(tiny_chat_base, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from seal.editor import replay
    from seal.editor.base import load_base
    from seal.editor.generation import chat_prompt

    monkeypatch.setenv("SEAL_CACHE", str(tmp_path / "cache" / "bases"))
    monkeypatch.setattr(replay, "_IN_PROCESS", {})
    base = load_base(str(tiny_chat_base), cache_dir=tmp_path / "cache" / "bases", device="cpu")
    session = SimpleNamespace(model=base.model, tok=base.tokenizer, base_row={"id": "b" * 64})
    first = replay.chat_replies(session)
    assert len(first) == len(replay.CHAT_ANCHORS) + len(replay.SAFETY_ANCHORS)
    requests = replay.CHAT_ANCHORS + replay.SAFETY_ANCHORS
    assert [prompt for prompt, _ in first] == [chat_prompt(base.tokenizer, q) for q in requests]
    assert all(reply for _, reply in first)
    monkeypatch.setattr(replay, "_IN_PROCESS", {})
    monkeypatch.setattr(replay, "base_chat_replies", lambda *a: (_ for _ in ()).throw(AssertionError("generated again")))
    assert replay.chat_replies(session) == first  # read back from the machine's cache
    # an entry that does not hold one reply per request is written again, not zipped short
    [entry] = (tmp_path / "cache" / "bases" / "replay").glob("*-chat-*.json")
    entry.write_text('["one reply"]')
    monkeypatch.setattr(replay, "_IN_PROCESS", {})
    monkeypatch.setattr(replay, "base_chat_replies", lambda *a: [r for _, r in first])
    assert replay.chat_replies(session) == first
    # a hostile entry (a FIFO no writer opens) is replaced, not waited on
    import os

    entry.unlink()
    os.mkfifo(entry)
    monkeypatch.setattr(replay, "_IN_PROCESS", {})
    assert replay.chat_replies(session) == first and entry.is_file()
    assert replay.anchor_texts(session, ["a replay line"], 0.0) == []


def test_a_prompt_reply_anchor_counts_only_the_replys_opening(tiny_chat_base, tmp_path):
    from peft import LoraConfig, get_peft_model

    from seal.editor.base import load_base
    from seal.editor.generation import chat_prompt
    from seal.editor.kl_anchor import REPLY_POSITIONS, Anchor
    from seal.editor.train import detach_adapters

    base = load_base(str(tiny_chat_base), cache_dir=tmp_path / "cache", device="cpu")
    tok = base.tokenizer
    prompt = chat_prompt(tok, "Write two sentences about autumn.")
    reply = "Leaves turn red and gold. The evenings grow cool and short."
    peft = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    try:
        whole, pair = Anchor.record(peft, tok, [prompt + reply, (prompt, reply)]).snapshots
    finally:
        detach_adapters(peft)
    head = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert whole.start == 0 and whole.logp.shape[0] == whole.ids.shape[1] - 1
    # the prompt's last position (it predicts the reply's first token) and the reply's first tokens
    assert pair.start == head - 1 and pair.logp.shape[0] == REPLY_POSITIONS
    assert pair.ids.shape[1] == head + REPLY_POSITIONS


def test_a_cached_placebo_names_the_anchor_it_was_held_to(monkeypatch):
    from seal.editor import replay
    from seal.editor.placebo import placebo_key

    def key(kl):
        return placebo_key("p" * 64, "b" * 64, {"lr": 3e-4, "kl": kl}, 120, 8, 0)

    held, free = key(1.0), key(0.0)
    monkeypatch.setattr(replay, "SAFETY_ANCHORS", replay.SAFETY_ANCHORS[:-1])
    assert key(1.0) != held  # other anchor texts: trained again, not reused
    assert key(0.0) == free  # no anchor, nothing to name


def test_an_anchor_cache_reuses_the_parents_snapshots_and_gives_the_same_adapter(tiny_chat_base, tmp_path, monkeypatch):
    """A cached snapshot is the one the forward would give (bit for bit: the same forward on the
    same weights), so an adapter trained with the cache is the adapter trained without it; a
    parent whose files changed is a new key and is recorded again."""
    import torch

    from seal.editor import kl_anchor
    from seal.editor.base import load_base
    from seal.editor.train import train_adapter

    base = load_base(str(tiny_chat_base), cache_dir=tmp_path / "cache", device="cpu")
    model, tok = base.model, base.tokenizer
    neutral = ["The train left the station and the town was quiet again.",
               ("Say hello.", "Hello! How can I help you today?")]
    passage = ["Zorblat\nThe violet Zorblat bridge was built in 1832 by Ada Lindqvist."] * 3
    parent = tmp_path / "parent"
    train_adapter(model, tok, passage, out_dir=parent, r=4, alpha=8, lr=1e-2, epochs=1, seed=0)
    forwards = []
    real = kl_anchor._snapshot
    monkeypatch.setattr(kl_anchor, "_snapshot", lambda *a: forwards.append(a[2]) or real(*a))
    cache = kl_anchor.AnchorCache()
    kw = dict(parent_adapter_dir=parent, lr=1e-2, epochs=2, seed=1, anchor_texts=neutral, kl_weight=2.0)
    plain = train_adapter(model, tok, passage, out_dir=tmp_path / "plain", **kw)
    assert len(forwards) == 2
    first = train_adapter(model, tok, passage, out_dir=tmp_path / "first", anchor_cache=cache, **kw)
    again = train_adapter(model, tok, passage, out_dir=tmp_path / "again", anchor_cache=cache, **kw)
    assert len(forwards) == 4  # recorded once into the cache, then taken from it
    assert plain["losses"] == first["losses"] == again["losses"]
    assert plain["kl_anchor_sha256"] == again["kl_anchor_sha256"]
    weights = [(tmp_path / d / "adapter_model.safetensors").read_bytes() for d in ("plain", "first", "again")]
    assert weights[0] == weights[1] == weights[2]
    # the parent's folder changes: its key changes, and the texts are recorded again at it
    key = kl_anchor.parent_key(parent)
    train_adapter(model, tok, passage, out_dir=parent, r=4, alpha=8, lr=1e-2, epochs=2, seed=0)
    assert kl_anchor.parent_key(parent) != key and kl_anchor.parent_key(None) == "base"
    train_adapter(model, tok, passage, out_dir=tmp_path / "child2", anchor_cache=cache, **kw)
    assert len(forwards) == 6
    snap = cache.get((kl_anchor.parent_key(parent), kl_anchor._text_key(neutral[0]), 128))
    assert isinstance(snap.logp, torch.Tensor) and snap.logp.shape[-1] == snap.top.shape[-1] + 1


def test_two_legs_give_the_adapter_one_run_gives(tiny_chat_base, tmp_path):
    """A training stopped after some steps and taken on from there (a raced candidate's two legs)
    ends with the bytes of the run that never stopped: the same weights, AdamW state, schedule,
    data order and anchor text per step. From a fresh adapter and from a parent, with the anchor."""
    from seal.editor.base import load_base
    from seal.editor.train import Leg, train_adapter

    base = load_base(str(tiny_chat_base), cache_dir=tmp_path / "cache", device="cpu")
    model, tok = base.model, base.tokenizer
    passage = [f"Zorblat\nThe violet Zorblat bridge was built in {1800 + i} by Ada Lindqvist." for i in range(5)]
    train_adapter(model, tok, passage[:2], out_dir=tmp_path / "parent", r=4, alpha=8, lr=1e-2, epochs=1, seed=0)
    anchors = ["The train left the station and the town was quiet again.", ("Say hello.", "Hello! How are you?")]
    for parent in (None, tmp_path / "parent"):
        kw = dict(parent_adapter_dir=parent, r=4, alpha=8, lr=1e-2, epochs=2, seed=3, anchor_texts=anchors,
                  kl_weight=2.0)
        tag = "fresh" if parent is None else "child"
        whole = train_adapter(model, tok, passage, out_dir=tmp_path / f"{tag}-whole", **kw)
        leg = Leg(share=0.25)  # 3 of the 10 steps
        first = train_adapter(model, tok, passage, out_dir=tmp_path / f"{tag}-first", leg=leg, **kw)
        assert first["steps"] == 3 and leg.step == 3 and leg.total == whole["steps"] == 10 and leg.optimizer
        assert len(leg.anchor.snapshots) == 2  # held to the parent in both legs, not to where the first stopped
        second = train_adapter(model, tok, passage, out_dir=tmp_path / f"{tag}-second", leg=leg, **kw)
        assert second["losses"] == whole["losses"] and second["steps"] == 10 and leg.optimizer is None
        one, two = ((tmp_path / f"{tag}-{d}" / "adapter_model.safetensors").read_bytes() for d in ("whole", "second"))
        assert one == two
        partial = (tmp_path / f"{tag}-first" / "adapter_model.safetensors").read_bytes()
        assert partial != one
