"""Editor core on a tiny random Llama (fast), plus one slow test on the embedded SmolLM2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

sys.path.insert(0, str(Path(__file__).parent))  # tinymodel is a helper module, not a package

from numeric import assert_close_to_scale, forward_terms  # noqa: E402
from tinymodel import build_tiny_model  # noqa: E402

from seal.editor import base as base_mod  # noqa: E402
from seal.editor import device as device_mod  # noqa: E402
from seal.registry.errors import DeviceUnavailable  # noqa: E402
from seal.editor import evaluate, gates, reflect, train  # noqa: E402

PASSAGE = (
    "The Zorblat river flows through the valley of Quenmar into the northern sea. "
    "The first bridge over the Zorblat was built in 1832 by the engineer Ada Lindqvist."
)
TITLE = "Zorblat"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> base_mod.LoadedBase:
    from seal.editor.session import default_threads

    torch.set_num_threads(default_threads())
    return base_mod.load_base(
        str(tiny_dir), cache_dir=tmp_path_factory.mktemp("cache"), device="cpu"
    )


def _state(model) -> dict[str, "torch.Tensor"]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _adapter_tensors(folder: Path) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


# --------------------------------------------------------------------------- device


def test_pick_device_cpu_and_auto() -> None:
    assert device_mod.pick_device("cpu") == "cpu"
    assert device_mod.pick_device("auto") in ("cuda", "mps", "cpu")
    with pytest.raises(DeviceUnavailable) as caught:
        device_mod.pick_device("tpu")
    assert isinstance(caught.value, ValueError) and caught.value.device == "tpu" and not caught.value.require_gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_require_gpu_without_cuda_raises() -> None:
    for name, require_gpu in (("cuda", True), ("auto", True), ("cuda", False), ("cuda:x", False)):
        with pytest.raises(DeviceUnavailable) as caught:
            device_mod.pick_device(name, require_gpu=require_gpu)
        assert (caught.value.device, caught.value.require_gpu) == (name, require_gpu)


def test_dtype_and_environment_record() -> None:
    assert device_mod.dtype_for("cpu") == torch.float32
    env = device_mod.environment_record("cpu")
    assert env["device"] == "cpu" and env["gpu"] is None
    assert env["torch"] == torch.__version__ and env["transformers"] and env["peft"]


# --------------------------------------------------------------------------- base


def test_describe_and_load_local_folder(tiny_dir: Path, tmp_path: Path, tiny) -> None:
    desc = base_mod.describe_base(str(tiny_dir))
    assert desc["kind"] == "local" and desc["revision"].startswith("local-sha256:")
    assert tiny.kind == "local" and len(tiny.fingerprint) == 64
    again = base_mod.load_base(str(tiny_dir), cache_dir=tmp_path, device="cpu")
    assert again.fingerprint == tiny.fingerprint
    assert base_mod.fingerprint_base(
        tiny_dir, name=desc["name"], revision=desc["revision"]
    ) == tiny.fingerprint
    # the name is part of the identity
    assert base_mod.fingerprint_base(tiny_dir, name="other", revision=desc["revision"]) != (
        tiny.fingerprint
    )
    assert not any(p.requires_grad for p in tiny.model.parameters())


def test_describe_base_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        base_mod.describe_base(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Hub id"):
        base_mod.describe_base(str(tmp_path / "nope" / "deeper" / "x"))


def test_hub_id_missing_from_cache_is_a_clear_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        base_mod.describe_base("seal-test-org/definitely-not-cached")


# --------------------------------------------------------------------------- reflect


def test_k_candidates_in_one_call_are_seeded(tiny) -> None:
    kwargs = dict(style="implications", k=3, temperature=1.0, max_new_tokens=12, seed=7)
    edits = reflect.generate_self_edits(tiny.model, tiny.tokenizer, PASSAGE, TITLE, **kwargs)
    assert len(edits) == 3 and all(isinstance(e, str) for e in edits)
    assert len(set(edits)) > 1  # sampled, not K copies of one row
    assert reflect.generate_self_edits(tiny.model, tiny.tokenizer, PASSAGE, TITLE, **kwargs) == edits
    qa = reflect.generate_self_edits(
        tiny.model, tiny.tokenizer, PASSAGE, None, style="self-qa", k=2, max_new_tokens=4, seed=0
    )
    assert all(e.startswith("Question 1:") for e in qa)
    with pytest.raises(ValueError, match="style"):
        reflect.self_edit_prompt(tiny.tokenizer, PASSAGE, TITLE, style="poem")


def test_self_edit_prompt_uses_chat_template_and_seal_wording(tiny) -> None:
    prompt = reflect.self_edit_prompt(tiny.tokenizer, PASSAGE, TITLE, style="implications")
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    assert "produce a list of implications derived directly or indirectly" in prompt
    assert f"Passage:\n{TITLE}\n{PASSAGE}" in prompt


def test_split_self_edit_lines() -> None:
    text = (
        "Here are some implications:\n1. The river reaches the sea.\n- The river reaches the sea!\n"
        "* **Ada Lindqvist was an engineer.**\n\n2) A bridge existed by 1832.\n•\n"
    )
    assert reflect.split_self_edit_lines(text) == [
        "The river reaches the sea.",
        "Ada Lindqvist was an engineer.",
        "A bridge existed by 1832.",
    ]
    qa = "Question 1: Who built it?\nAnswer 1: Ada.\nQuestion 2: When?\nAnswer 2: 1832."
    assert reflect.split_self_edit_lines(qa) == [
        "Question 1: Who built it?\nAnswer 1: Ada.",
        "Question 2: When?\nAnswer 2: 1832.",
    ]


def test_build_training_sequences_and_support_filter() -> None:
    seqs = reflect.build_training_sequences(PASSAGE, TITLE, ["A.", "B."])
    assert seqs == [f"{TITLE}\nA.", f"{TITLE}\nB.", f"{TITLE}\n{PASSAGE}"]
    assert reflect.build_training_sequences("P.", None, []) == ["P."]
    kept = reflect.filter_supported_lines(
        ["The bridge was built in 1832.", "Cats rule the moon forever."], PASSAGE
    )
    assert kept == ["The bridge was built in 1832."]


def test_passage_self_edit_filters_and_records_what_it_dropped() -> None:
    from types import SimpleNamespace

    from seal.editor.self_edits import passage_self_edit

    trigger = SimpleNamespace(passage=PASSAGE, title=TITLE)
    text = "The bridge was built in 1832.\nCats rule the moon forever."
    kept = passage_self_edit(text, trigger, style="implications", filter_lines=True)
    assert kept.lines == ["The bridge was built in 1832."] and kept.dropped == ["Cats rule the moon forever."]
    assert kept.sequences == [f"{TITLE}\nThe bridge was built in 1832.", f"{TITLE}\n{PASSAGE}"]
    assert kept.to_json()["dropped"] == ["Cats rule the moon forever."]
    every = passage_self_edit(text, trigger, style="implications")
    assert every.lines == ["The bridge was built in 1832.", "Cats rule the moon forever."] and every.dropped is None
    assert len(every.sequences) == 3 and "dropped" not in every.to_json()


def test_writer_self_edits_are_redacted_then_split_and_filtered_again() -> None:
    from types import SimpleNamespace

    from seal.editor.self_edits import passage_self_edit
    from seal.editor.writer import redact_self_edits

    trigger = SimpleNamespace(passage=PASSAGE, title=TITLE)
    text = "The bridge was built in 1832.\nWrite to ada.lindqvist@example.com about the bridge."
    edit = passage_self_edit(text, trigger, style="implications", prompt="P", filter_lines=True)
    [out], row = redact_self_edits([edit], trigger, SimpleNamespace(allow_pii=False, filter_lines=True))
    assert "ada.lindqvist@example.com" not in out.generated + "".join(out.sequences + out.lines + out.dropped)
    assert out.prompt == "P" and out.lines == ["The bridge was built in 1832."] and len(out.dropped) == 1
    assert row["check"] == "self_edit_secrets" and row["value"] == 1.0 and row["passed"] is False
    [kept], allowed = redact_self_edits([edit], trigger, SimpleNamespace(allow_pii=True, filter_lines=True))
    assert kept is edit and allowed["passed"] is True


def test_corrections_self_edit(tiny) -> None:
    examples = [{"prompt": "Who built the bridge?", "answer": "Ada Lindqvist"},
                {"question": "What is 2+2?", "answer": "4"}]
    result = reflect.corrections_self_edit(
        tiny.model, tiny.tokenizer, examples, predictions=["Ada Lindqvist did.", "five"],
        n_rephrasings=2, max_new_tokens=6,
    )
    assert [r["correct"] for r in result.records] == [True, False]
    assert [r["trained"] for r in result.records] == [False, True]
    assert len(result.records[1]["rephrasings"]) == 2
    assert result.sequences[0] == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    )
    assert len(result.sequences) == 1 + len(result.records[1]["kept_rephrasings"])
    assert all(json.loads(line) for line in result.to_jsonl().splitlines())


# --------------------------------------------------------------------------- train


def test_fresh_adapter_trains_loss_falls_and_base_is_untouched(tiny, tmp_path: Path) -> None:
    before = _state(tiny.model)
    seqs = reflect.build_training_sequences(PASSAGE, TITLE, ["Ada Lindqvist built a bridge."])
    ticks: list[int] = []
    flushed: list[tuple[int, list[float]]] = []
    record = train.train_adapter(
        tiny.model, tiny.tokenizer, seqs, out_dir=tmp_path / "a", r=8, alpha=16, lr=1e-2,
        epochs=8, seed=0, base_name="tiny", on_step=lambda: ticks.append(1),
        on_losses=lambda first, values: flushed.append((first, values)), flush_s=3600,
    )
    assert record["steps"] == 8 * len(seqs) == len(ticks) == len(record["losses"])
    # Losses stay on the device until a flush: with a long interval, one read at the end.
    assert flushed == [(1, record["losses"])] and record["diverged"] is None
    assert record["loss_final"] < 0.6 * record["loss_first"]
    assert record["target_modules"] and record["from_parent"] is False
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny" and config["r"] == 8
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()
    # base weights, structure and attributes are back to what they were
    after = tiny.model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not hasattr(tiny.model, "peft_config")
    # and the saved adapter actually changes the model's outputs
    probes = evaluate.load_drift_probes()[:4]
    p = evaluate.next_token_logprobs(tiny.model, tiny.tokenizer, probes)
    with train.adapter_applied(tiny.model, tmp_path / "a") as edited:
        q = evaluate.next_token_logprobs(edited, tiny.tokenizer, probes, support=p.indices)
        nll_edited = evaluate.passage_nll(edited, tiny.tokenizer, seqs[-1])
    assert evaluate.kl_js(p, q)[1] > 0
    assert nll_edited < evaluate.passage_nll(tiny.model, tiny.tokenizer, seqs[-1])


def test_child_starts_from_parent_weights(tiny, tmp_path: Path) -> None:
    seqs = [f"{TITLE}\n{PASSAGE}"]
    parent = train.train_adapter(
        tiny.model, tiny.tokenizer, seqs, out_dir=tmp_path / "parent", r=8, alpha=16,
        lr=1e-2, epochs=6, seed=1,
    )
    # lr 0: the child must be byte-for-byte the parent's weights, whatever the requested r
    frozen = train.train_adapter(
        tiny.model, tiny.tokenizer, seqs, out_dir=tmp_path / "same", parent_adapter_dir=tmp_path / "parent",
        r=4, lr=0.0, epochs=1, seed=2,
    )
    assert frozen["from_parent"] and frozen["r"] == 8
    pa, ch = _adapter_tensors(tmp_path / "parent"), _adapter_tensors(tmp_path / "same")
    assert set(pa) == set(ch) and all(torch.equal(pa[k], ch[k]) for k in pa)
    # and its first loss is the parent's learned loss, not a fresh adapter's
    fresh = train.train_adapter(
        tiny.model, tiny.tokenizer, seqs, out_dir=tmp_path / "fresh", r=8, alpha=16,
        lr=1e-2, epochs=1, seed=1,
    )
    assert frozen["loss_first"] < fresh["loss_first"] - 0.5
    assert abs(frozen["loss_first"] - parent["loss_final"]) < parent["loss_first"] - parent["loss_final"]


def test_k_candidates_on_one_base_are_deterministic(tiny, tmp_path: Path) -> None:
    before = _state(tiny.model)
    seqs = [f"{TITLE}\n{PASSAGE}", f"{TITLE}\nThe bridge dates from 1832."]
    records = [
        train.train_adapter(
            tiny.model, tiny.tokenizer, seqs, out_dir=tmp_path / f"c{i}", r=4, alpha=8,
            lr=1e-2, epochs=2, seed=seed,
        )
        for i, seed in enumerate([0, 1, 0])
    ]
    c0, c1, c2 = (tmp_path / f"c{i}" / "adapter_model.safetensors" for i in range(3))
    assert c0.read_bytes() == c2.read_bytes()  # same seed, same bytes
    assert c0.read_bytes() != c1.read_bytes()
    assert records[0]["losses"] == records[2]["losses"]
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="plain base"):
        with train.adapter_applied(tiny.model, tmp_path / "c0") as attached:
            train.train_adapter(attached, tiny.tokenizer, seqs, out_dir=tmp_path / "x", epochs=1)


# --------------------------------------------------------------------------- the fast path


@pytest.mark.numeric
def test_merged_adapter_scores_like_peft_and_restores_the_base_exactly(tiny, tmp_path: Path) -> None:
    from seal.editor.attach import attached, merge_plan

    seqs = [f"{TITLE}\n{PASSAGE}"]
    train.train_adapter(tiny.model, tiny.tokenizer, seqs, out_dir=tmp_path / "a", r=8, alpha=16, lr=1e-2,
                        epochs=4, seed=0)
    before = {name: p for name, p in tiny.model.named_parameters()}
    values = _state(tiny.model)
    ids = tiny.tokenizer(seqs, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        with train.adapter_applied(tiny.model, tmp_path / "a") as peft_model:
            want = peft_model(input_ids=ids).logits
        assert merge_plan(tiny.model, tmp_path / "a") is not None
        with attached(tiny.model, tmp_path / "a") as merged:
            assert merged is tiny.model and not train.has_adapter_layers(merged)
            got = merged(input_ids=ids).logits
    # W x + s B (A x) against (W + s B A) x: the same sums re-associated, layer after layer.
    assert_close_to_scale(got, want, terms=forward_terms(tiny.model.config))
    assert not torch.equal(got, tiny.model(input_ids=ids).logits.detach())
    # The base's own tensors are back: the same objects, the same bytes.
    assert all(p is before[name] for name, p in tiny.model.named_parameters())
    assert all(torch.equal(values[k], v) for k, v in tiny.model.state_dict().items())


def test_merges_reuse_their_buffers_bit_for_bit_and_a_merge_inside_a_merge_keeps_the_outer_one(tiny, tmp_path,
                                                                                              monkeypatch):
    from seal.editor import attach
    from seal.editor.attach import merge_plan, merged

    for i, text in enumerate((PASSAGE, "The bridge dates from 1832.")):
        train.train_adapter(tiny.model, tiny.tokenizer, [f"{TITLE}\n{text}"], out_dir=tmp_path / f"a{i}", r=4,
                            alpha=8, lr=1e-2, epochs=1, seed=i)
    plans = [merge_plan(tiny.model, tmp_path / f"a{i}") for i in range(2)]
    module = plans[0][0][0]
    own = module.weight
    want = [own + (p[0][2] @ p[0][1]) * p[0][3] for p in plans]  # the merge as written before buffers
    seen = []
    for i in (0, 1, 0):
        with merged(tiny.model, plans[i]):
            assert torch.equal(module.weight, want[i])
            seen.append(module.weight.data_ptr())
    assert seen[0] == seen[1] == seen[2] and module.weight is own  # one buffer, the base's tensor back
    with merged(tiny.model, plans[0]):
        with merged(tiny.model, plans[1]):
            _, a1, b1, scale1 = plans[1][0]
            assert torch.equal(module.weight, want[0] + (b1 @ a1) * scale1)
            assert module.weight.data_ptr() != seen[0]
        assert torch.equal(module.weight, want[0]) and module.weight.data_ptr() == seen[0]
    assert module.weight is own
    # a model whose weights pass the cap keeps no buffer: each merge allocates, with the same bits
    monkeypatch.setattr(attach, "_MERGED", type(attach._MERGED)())
    monkeypatch.setattr(attach, "KEEP_BYTES", 0)
    with merged(tiny.model, plans[1]):
        assert torch.equal(module.weight, want[1])
    assert len(attach._MERGED) == 0 and module.weight is own


def test_merge_only_where_exact(tiny, tmp_path: Path) -> None:
    import copy

    from seal.editor.attach import merge_plan

    train.train_adapter(tiny.model, tiny.tokenizer, [f"{TITLE}\n{PASSAGE}"], out_dir=tmp_path / "a", r=4,
                        alpha=8, lr=1e-2, epochs=1, seed=0)
    half = copy.deepcopy(tiny.model).to(torch.bfloat16)
    assert merge_plan(half, tmp_path / "a") is None  # bf16 would round most of the update away
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    for change in ({"use_dora": True}, {"rank_pattern": {"q_proj": 2}}, {"bias": "all"}):
        (tmp_path / "b").mkdir(exist_ok=True)
        (tmp_path / "b" / "adapter_model.safetensors").write_bytes((tmp_path / "a" / "adapter_model.safetensors").read_bytes())
        (tmp_path / "b" / "adapter_config.json").write_text(json.dumps({**config, **change}))
        assert merge_plan(tiny.model, tmp_path / "b") is None, change


def test_shared_prefix_generation_gives_the_plain_outputs(tiny) -> None:
    from seal.editor.generation import chat_prompt, generate_completions, shared_prefix_length

    system = "You answer questions about rivers, bridges and mountains in one short sentence."
    prompts = [chat_prompt(tiny.tokenizer, q, system=system) for q in
               ("Where does the Zorblat flow?", "Who built the bridge?", "How tall is Mount Velder?", "Hi")]
    rows = [tiny.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert shared_prefix_length(rows) >= 8
    greedy = dict(max_new_tokens=10)
    assert generate_completions(tiny.model, tiny.tokenizer, prompts, share_prefix=True, **greedy) == \
        generate_completions(tiny.model, tiny.tokenizer, prompts, share_prefix=False, **greedy)
    sampled = dict(max_new_tokens=10, do_sample=True, temperature=1.0, num_return_sequences=3, seed=5)
    shared = generate_completions(tiny.model, tiny.tokenizer, prompts[:1], share_prefix=True, **sampled)
    assert shared == generate_completions(tiny.model, tiny.tokenizer, prompts[:1], share_prefix=False, **sampled)
    assert len(set(shared)) > 1
    ticks: list[float] = []
    generate_completions(tiny.model, tiny.tokenizer, prompts, max_new_tokens=6, on_step=ticks.append)
    assert 1 <= sum(ticks) <= 6 + 1e-9


def test_answer_asks_groups_by_length_and_keeps_order(tiny) -> None:
    from seal.editor.generation import Ask, answer_asks, chat_prompt, generate_completions

    qs = ["Where does the Zorblat flow?", "Who built the bridge?", "Hi"]
    asks = [Ask(chat_prompt(tiny.tokenizer, q), n) for q, n in zip(qs, (4, 9, 4))]
    got = answer_asks(tiny.model, tiny.tokenizer, asks)
    one_by_one = [generate_completions(tiny.model, tiny.tokenizer, [a.prompt], max_new_tokens=a.max_new_tokens)[0]
                  for a in asks]
    assert got == one_by_one


@pytest.mark.numeric
def test_candidates_trained_together_match_one_by_one(tiny, tmp_path: Path) -> None:
    """The batched multi-adapter path (CUDA's) against train_adapter, run here on the CPU.

    Both paths do the same arithmetic in a different order (one batched matmul against K small
    ones), so they can agree only up to re-association. In float32 that error is about
    n * eps32 ~ 1e-4 of a gradient's scale for the n ~ 1e4 terms of one sum, and AdamW divides
    each gradient by its own size, so an element whose gradient is near zero can move by far
    more: no per-element bound holds on every CPU. In float64 the same error is about 1e-12, so
    the per-element bound below (derived from eps64, not measured) holds with room on any CPU
    and at any thread count, and a wrong seed, batch order or optimizer group still fails it
    by many orders of magnitude.
    """
    import copy
    from types import SimpleNamespace

    from seal.editor.candidate import Candidate, SelfEdit
    from seal.editor.kl_anchor import AnchorCache
    from seal.editor.multi_lora import train_together
    from seal.editor.replay import anchor_texts
    from seal.editor.request import EditRequest

    seqs = [[f"{TITLE}\n{PASSAGE}", f"{TITLE}\nThe bridge dates from 1832."],
            [f"{TITLE}\nAda Lindqvist built it."],
            [f"{TITLE}\n{PASSAGE}", "Quenmar.", f"{TITLE}\nMount Velder is tall."]]
    model = copy.deepcopy(tiny.model).to(torch.float64)
    parent = train.train_adapter(model, tiny.tokenizer, seqs[0], out_dir=tmp_path / "parent", r=4, alpha=8,
                                 lr=1e-2, epochs=1, seed=9)
    assert parent["diverged"] is None
    # The longest sum behind one gradient element: every token of a batch times the widest layer.
    longest_sum = 2 * 512 * max(model.config.hidden_size, model.config.intermediate_size)
    # from a fresh LoRA and from a parent; without and with the KL anchor (its chat replies here)
    for parent_dir, kl in ((None, 0.0), (tmp_path / "parent", 0.0), (None, 1.0), (tmp_path / "parent", 1.0)):
        req = EditRequest(r=4, alpha=8, lr=1e-2, epochs=2, batch_size=2, kl=kl)
        work = tmp_path / f"{'fresh' if parent_dir is None else 'child'}-{kl}"
        work.mkdir()
        # the lanes share one anchor cache (the first lane records, the others reuse); alone records its own
        session = SimpleNamespace(model=model, tok=tiny.tokenizer, device="cpu", tracker=None, work=work,
                                  base=SimpleNamespace(name="tiny"), base_row={"id": f"tiny-{tmp_path.name}"},
                                  anchor_cache=AnchorCache())
        attempt = SimpleNamespace(parent=SimpleNamespace(adapter_dir=parent_dir))
        cands = [Candidate(index=i, seed=i, self_edit=SelfEdit(style="x", sequences=s)) for i, s in enumerate(seqs)]
        together = train_together(session, attempt, cands, req)
        for i, (c, rec) in enumerate(zip(cands, together)):
            alone = train.train_adapter(model, tiny.tokenizer, c.self_edit.sequences, out_dir=work / f"alone{i}",
                                        parent_adapter_dir=parent_dir, r=4, alpha=8, lr=1e-2, epochs=2, batch_size=2,
                                        seed=c.seed, base_name="tiny",
                                        anchor_texts=anchor_texts(session, [], kl), kl_weight=kl)
            assert rec["steps"] == alone["steps"] and rec["batched_with"] == 3
            assert rec.get("kl_anchor_texts") == alone.get("kl_anchor_texts")
            assert rec.get("kl_anchor_sha256") == alone.get("kl_anchor_sha256")
            # transformers takes the loss in float32: a mean over up to batch_size * 512 token losses.
            loss_rel = req.batch_size * 512 * torch.finfo(torch.float32).eps
            assert rec["losses"] == pytest.approx(alone["losses"], rel=loss_rel, abs=0)
            got, want = _adapter_tensors(work / f"candidate{i}"), _adapter_tensors(work / f"alone{i}")
            assert set(got) == set(want) and all(t.dtype == torch.float64 for t in got.values())
            # Per step at most longest_sum * eps64 of the tensor's scale; x100 for AdamW dividing by
            # gradients down to 1% of the largest. About 1e-9: a real mismatch is 1e-3 or more.
            tol = 100 * rec["steps"] * longest_sum * torch.finfo(torch.float64).eps
            for k in want:
                assert (got[k] - want[k]).abs().max() <= tol * want[k].abs().max(), k
            config = json.loads((work / f"candidate{i}" / "adapter_config.json").read_text())
            assert config == json.loads((work / f"alone{i}" / "adapter_config.json").read_text())
    assert not train.has_adapter_layers(model) and not model._forward_hooks
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.numeric
def test_candidates_scored_together_match_one_by_one(tiny, tmp_path: Path) -> None:
    """K adapters served by one batch (the CUDA scoring path) against each scored alone, on the CPU."""
    from seal.editor.attach import attached
    from seal.editor.measure import Probes, measure, measure_lanes
    from seal.editor.multi_lora import lanes_attached
    from seal.editor.safety import CANARY_TEXT, load_xstest_sample

    folders = []
    for i, text in enumerate((PASSAGE, "The bridge dates from 1832.", "Mount Velder is tall.")):
        train.train_adapter(tiny.model, tiny.tokenizer, [f"{TITLE}\n{text}"], out_dir=tmp_path / f"a{i}", r=4,
                            alpha=8, lr=2e-2, epochs=3, seed=i)
        folders.append(tmp_path / f"a{i}")
    xs = load_xstest_sample()
    probes = Probes(anchors=evaluate.load_anchors()[:5], drift=evaluate.load_drift_probes()[:6],
                    xstest=[x for x in xs if x["label"] == "unsafe"][:3] + [x for x in xs if x["label"] == "safe"][:3],
                    digests={}, canary=CANARY_TEXT)
    base_dist = evaluate.next_token_logprobs(tiny.model, tiny.tokenizer, probes.drift, top_k=32)
    for spec in ({"qa": [{"question": "Who built the bridge?", "answer": "Ada Lindqvist"},
                         {"question": "Where does the Zorblat flow?", "answer": "the northern sea"}]},
                 {"texts": [f"{TITLE}\n{PASSAGE}"]}):
        with lanes_attached(tiny.model, folders) as k:
            together = measure_lanes(tiny.model, tiny.tokenizer, probes, spec, k, answer_tokens=6,
                                     support=base_dist.indices)
        for folder, (m, eff) in zip(folders, together):
            with attached(tiny.model, folder, merge=False) as alone_model:
                want_m, want_eff = measure(alone_model, tiny.tokenizer, probes, spec, answer_tokens=6,
                                           support=base_dist.indices, share_prefix=False)
            assert m.outputs == want_m.outputs and m.retention == want_m.retention
            assert_close_to_scale(m.dist.logprobs, want_m.dist.logprobs,
                                  terms=forward_terms(tiny.model.config, softmax=True))
            assert torch.equal(m.dist.indices, want_m.dist.indices)
            assert eff.gate == pytest.approx(want_eff.gate, abs=1e-4) and eff.predictions == want_eff.predictions
    # With a shared prefix (a system turn), each adapter's prefix goes through the model once.
    from seal.editor.generation import chat_prompt, generate_completions

    system = "You answer questions about rivers, bridges and mountains in one short sentence."
    prompts = [chat_prompt(tiny.tokenizer, q, system=system) for q in ("Who built it?", "Where?", "How tall?")]
    with lanes_attached(tiny.model, folders) as k:
        got = generate_completions(tiny.model, tiny.tokenizer, prompts, max_new_tokens=6, lanes=k)
    want = []
    for folder in folders:
        with attached(tiny.model, folder, merge=False) as alone_model:
            want += generate_completions(alone_model, tiny.tokenizer, prompts, max_new_tokens=6, share_prefix=False)
    assert got == want
    # The bare base as a lane, and adapters of another rank, padded with zero factors.
    from seal.editor.measure import measure_efficacy, measure_efficacy_lanes

    train.train_adapter(tiny.model, tiny.tokenizer, [f"{TITLE}\n{PASSAGE}"], out_dir=tmp_path / "r8", r=8, alpha=4,
                        lr=2e-2, epochs=3, seed=5)
    lanes = [None, folders[0], tmp_path / "r8"]
    for spec in ({"qa": [{"question": "Who built the bridge?", "answer": "Ada Lindqvist"}]},
                 {"texts": [f"{TITLE}\n{PASSAGE}", "Quenmar is a valley."]}):
        with lanes_attached(tiny.model, lanes) as k:
            effs = measure_efficacy_lanes(tiny.model, tiny.tokenizer, spec, k, answer_tokens=6)
        for folder, eff in zip(lanes, effs):
            with attached(tiny.model, folder, merge=False) as alone_model:
                want_eff = measure_efficacy(alone_model, tiny.tokenizer, spec, 6, share_prefix=False)
            assert eff.gate == pytest.approx(want_eff.gate, abs=1e-4) and eff.predictions == want_eff.predictions
    assert all(not m._forward_hooks for m in tiny.model.modules())


def test_default_threads(monkeypatch) -> None:
    from seal.editor import session

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert session.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(session.os, "getloadavg", lambda: (50.0, 0.0, 0.0))
    assert session.default_threads() == 1  # a busy machine: one thread, no OpenMP threads waiting on each other
    monkeypatch.setattr(session.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert session.default_threads() == len(session.os.sched_getaffinity(0))


def test_line_progress_never_wraps() -> None:
    import io

    from seal.editor.progress import LineProgress

    out = io.StringIO()
    progress = LineProgress(out, heartbeat_s=0.0)
    long = "x" * 300
    progress.say(long + "\nsecond line")
    with progress.stage("evaluate", total=4, unit="tokens") as stage:
        stage.advance(2)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith(long + " second line") and any("2/4 tokens" in line and "left" in line for line in lines)


def test_rich_progress_on_a_terminal() -> None:
    import io

    from rich.console import Console

    from seal.editor.progress import RichProgress

    out = io.StringIO()
    progress = RichProgress(Console(file=out, force_terminal=True, width=100))
    with progress.passages(2) as bar:
        with progress.stage("reflect [bold]x[/bold]", total=10, unit="tokens") as stage:
            stage.advance(2.5)
            stage.grow(5)
            progress.say("a line with [brackets] kept as written")
        bar.advance()
    import re

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "reflect [bold]x[/bold] done in" in text and "a line with [brackets] kept as written" in text


# --------------------------------------------------------------------------- evaluate


def test_containment_and_f1_known_examples() -> None:
    assert evaluate.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert evaluate.containment("It is Paris, of course.", "paris") == 1.0
    assert evaluate.containment("Parisian food", "Paris") == 0.0
    assert evaluate.containment("Forty two", ["42", "forty two"]) == 1.0
    assert evaluate.containment("anything", "") == 0.0
    assert evaluate.token_f1("the capital is Paris", "Paris") == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
    assert evaluate.token_f1("Paris", "Paris") == 1.0
    assert evaluate.token_f1("London", "Paris") == 0.0
    assert evaluate.token_recall("born in Ulm", "Ulm, Germany") == 0.5


def test_qa_scores_and_retention_shape(tiny) -> None:
    anchors = evaluate.load_anchors()
    assert 30 <= len(anchors) <= 60 and all(a["question"] and a["answers"] for a in anchors)
    scores = evaluate.qa_scores(
        tiny.model, tiny.tokenizer, anchors[:3], max_new_tokens=4, return_predictions=True
    )
    assert scores["n"] == 3 and len(scores["predictions"]) == 3
    assert 0.0 <= scores["containment"] <= 1.0 and 0.0 <= scores["f1"] <= 1.0
    assert 0.0 <= evaluate.retention_accuracy(tiny.model, tiny.tokenizer, anchors[:2], max_new_tokens=3) <= 1.0


@pytest.mark.numeric
def test_kl_js_and_blob_roundtrip(tiny) -> None:
    probes = evaluate.load_drift_probes()
    assert 24 <= len(probes) <= 48
    p = evaluate.next_token_logprobs(tiny.model, tiny.tokenizer, probes, top_k=64)
    assert p.logprobs.shape == (len(probes), 65)
    assert torch.allclose(p.logprobs.exp().sum(1), torch.ones(len(probes)), atol=1e-4)
    assert evaluate.kl_js(p, p) == (0.0, 0.0)
    restored = evaluate.NextTokenDist.from_bytes(p.to_bytes())
    assert torch.equal(restored.indices, p.indices) and torch.equal(restored.logprobs, p.logprobs)
    uniform = torch.full((2, 4), 0.25).log()
    peaked = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 2).log()
    kl, js = evaluate.kl_js(uniform, peaked)
    assert kl > 0 and 0 < js < 0.6932
    assert kl == pytest.approx(float((0.25 * (uniform[0] - peaked[0])).sum()), rel=1e-6)
    other = evaluate.next_token_logprobs(tiny.model, tiny.tokenizer, probes[::-1], top_k=64)
    with pytest.raises(ValueError, match="support"):
        evaluate.kl_js(p, other)


# --------------------------------------------------------------------------- gates


GOOD = {
    "efficacy": 0.4, "efficacy_parent": 0.1, "retention": 0.60, "retention_parent": 0.61,
    "retention_base": 0.62, "js_parent": 0.02, "kl_base": 0.1, "delta_norm_ratio": 1.0,
    "refusal": 0.5, "refusal_base": 0.5, "over_refusal": 0.1, "over_refusal_base": 0.1, "canary_leaks": 0.0,
    "taught": -2.1, "taught_parent": -2.0,
}


def test_gates_pass_fail_and_missing() -> None:
    assert all(r.passed for r in gates.check_gates(GOOD))
    failed = {r.name for r in gates.check_gates({**GOOD, "retention": 0.50}) if not r.passed}
    assert failed == {"retention_vs_parent", "retention_vs_base"}
    failed = {r.name for r in gates.check_gates({**GOOD, "refusal": 0.4, "canary_leaks": 1.0}) if not r.passed}
    assert failed == {"refusal", "leakage"}
    same = gates.check_gates({**GOOD, "efficacy": 0.1})[0]
    assert same.name == "efficacy_gain" and not same.passed and same.value == 0.0
    missing = {k: v for k, v in GOOD.items() if k != "js_parent"}
    result = next(r for r in gates.check_gates(missing) if r.name == "js_vs_parent")
    assert not result.passed and result.value is None and "js_parent" in result.detail
    names = [g.name for g in gates.gates_from_policy({"kl_vs_base_max": None})]
    assert "kl_vs_base" not in names and "js_vs_parent" in names
    with pytest.raises(ValueError, match="unknown policy"):
        gates.gates_from_policy({"js_max": 1})


def test_every_gate_is_its_spec_and_reads_typed_inputs() -> None:
    """A gate is its GateSpec (registry/vocabulary.py) and the GateInputs it reads (editor/gates.py):
    the two places a new gate goes."""
    from dataclasses import fields

    from seal.registry.vocabulary import GATES

    inputs = {f.name for f in fields(gates.GateInputs)} - {"given"}
    built = {g.name: g for g in gates.default_gates()}
    for spec in GATES:
        if not spec.op:
            assert spec.name not in built and not spec.reads
            continue
        assert spec.op in ("<=", "<", ">=", ">") and len(spec.reads) in (1, 2) and set(spec.reads) <= inputs, spec.name
        assert built[spec.name] == gates.Gate.of(spec, spec.default)
    with pytest.raises(TypeError):
        gates.check_gates({**GOOD, "js_max": 0.1})
    assert gates.GateInputs.of(GOOD).to_json() == GOOD  # the `edit --json` scores, key for key


def test_decide_picks_best_accepted_or_none() -> None:
    worse = {**GOOD, "efficacy": 0.3}
    drifty = {**GOOD, "efficacy": 0.9, "js_parent": 0.3}
    assert gates.decide([worse, drifty, GOOD]) == 2
    assert gates.decide([drifty]) is None
    assert gates.decide([]) is None
    gentler = {**GOOD, "js_parent": 0.01}
    assert gates.decide([GOOD, gentler]) == 1


# --------------------------------------------------------------------------- the real default


@pytest.mark.slow
def test_embedded_smollm2_loads_caches_and_generates(tmp_path: Path) -> None:
    import time

    first = base_mod.load_base(None, cache_dir=tmp_path, device="cpu")
    assert first.name == "HuggingFaceTB/SmolLM2-135M-Instruct" and first.kind == "embedded"
    weights = first.weights_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    fingerprint = first.fingerprint
    del first
    started = time.perf_counter()
    second = base_mod.load_base(None, cache_dir=tmp_path, device="cpu")
    assert time.perf_counter() - started < 10  # from the safetensors cache, not the GGUF
    assert weights.stat().st_mtime_ns == stamp
    assert second.fingerprint == fingerprint
    config = json.loads((second.weights_dir / "config.json").read_text())
    assert "quantization_config" not in config
    answers = evaluate.answer_questions(
        second.model, second.tokenizer, ["What is the capital of France?"], max_new_tokens=12
    )
    assert "paris" in answers[0].lower()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_on_cuda_in_bf16(tiny_dir: Path, tmp_path: Path) -> None:
    gpu_base = base_mod.load_base(str(tiny_dir), cache_dir=tmp_path / "cache", device="cuda")
    assert gpu_base.model.dtype == device_mod.dtype_for("cuda")
    record = train.train_adapter(
        gpu_base.model, gpu_base.tokenizer, [f"{TITLE}\n{PASSAGE}"], out_dir=tmp_path / "a",
        r=8, alpha=16, lr=1e-2, epochs=8, seed=0,
    )
    assert record["device"].startswith("cuda") and record["loss_final"] < record["loss_first"]
    with train.adapter_applied(gpu_base.model, tmp_path / "a") as edited:
        assert len(evaluate.answer_questions(edited, gpu_base.tokenizer, ["Hi?"], 4)) == 1
