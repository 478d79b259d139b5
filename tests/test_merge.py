"""`seal merge` and `seal consolidate` on the tiny model: PEFT merges, gated and recorded (in-process)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import Seal, make_registry
from test_edit import PASSAGE

OTHER = {"title": "Mount Velder", "context": "Mount Velder is the tallest peak of the Quenmar range, at 4120 metres."}
QUICK = ["--epochs", "3", "--lr", "1e-3", "--max-tokens", "12", "--no-track"]


@pytest.fixture(scope="module")
def built_lines(tmp_path_factory, tiny_chat_record):
    """main: root -> e0 -> e1 -> e2 (three edits); exp: root -> x0. Built once for the module."""
    root = tmp_path_factory.mktemp("merge")
    make_registry(root, tiny_chat_record).close()
    seal = Seal(root, {"SEAL_ACTOR": "merger"})
    (root / "a.json").write_text(json.dumps(PASSAGE))
    (root / "b.json").write_text(json.dumps(OTHER))
    seal("branch", "exp", "main")
    main_ids = []
    for i in range(3):
        out = json.loads(seal("edit", "--passage", "a.json" if i != 1 else "b.json", *QUICK, "--seed", str(i),
                              "--json", check=False).stdout)
        assert out["decision"]["accepted"], out
        main_ids.append(out["decision"]["id"])
    seal("checkout", "exp")
    out = json.loads(seal("edit", "--passage", "b.json", *QUICK, "--json", check=False).stdout)
    assert out["decision"]["accepted"], out
    seal("checkout", "main")
    return seal, main_ids, out["decision"]["id"]


@pytest.fixture
def lines(built_lines, tmp_path):
    """A copy of the module's registry for one test, so no test sees another's changes."""
    import shutil

    seal, main_ids, exp_id = built_lines
    copy = tmp_path / "lines"
    shutil.copytree(seal.cwd, copy)
    return Seal(copy, {"SEAL_ACTOR": "merger"}), main_ids, exp_id


def _dense(factors):
    return {m: f.scale * (f.B.astype(np.float64) @ f.A.astype(np.float64)) for m, f in factors.items()}


def test_cat_merge_is_the_weighted_sum(lines, tmp_path):
    from seal.registry.lora_math import load_lora_factors

    seal, main_ids, exp_id = lines
    proc = seal("merge", "main", "exp", "--method", "cat", "--weights", "0.7,0.3", "--no-track", "--json", check=False)
    out = json.loads(proc.stdout)
    assert proc.returncode == (0 if out["decision"]["accepted"] else 1), proc.stderr
    vid = out["candidates"][0]["id"]
    v = seal.json("show", vid)
    assert v["kind"] == "merge" and v["parents"] == [main_ids[-1], exp_id]
    assert v["merge"]["method"] == "cat" and v["merge"]["weights"] == [0.7, 0.3]
    assert {g["check"] for g in v["audit"]} >= {"efficacy_gain", "retention_vs_parent", "js_vs_parent"}
    assert set(v["train"]["timings"]) >= {"merge_s", "evaluate_s", "record_s"}
    folder = tmp_path / "merged"
    seal("checkout", vid, "--to", folder)
    # Its ΔW equals the weighted sum of the inputs' ΔW.
    merged = _dense(load_lora_factors(folder))
    inputs = []
    for i, rev in enumerate(("main", "exp")):
        d = tmp_path / f"in{i}"
        seal("checkout", rev, "--to", d)
        inputs.append(_dense(load_lora_factors(d)))
    assert set(merged) == set(inputs[0]) | set(inputs[1])
    for module, dw in merged.items():
        expected = 0.7 * inputs[0].get(module, 0) + 0.3 * inputs[1].get(module, 0)
        assert np.linalg.norm(dw - expected) <= 1e-5 * max(np.linalg.norm(expected), 1e-12), module

    # The merged folder loads with PEFT on its own and gives finite logits.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(_base_folder(seal)), folder)
    with torch.no_grad():
        logits = model(input_ids=torch.arange(1, 9).unsqueeze(0)).logits
    assert torch.isfinite(logits).all()


def _base_folder(seal) -> str:
    from seal.registry.repo import Registry

    reg = Registry.open(seal.cwd)
    try:
        return reg.base()["location"]
    finally:
        reg.close()


def test_merge_refusals(lines):
    from seal.registry.bases import base_record, insert_base
    from seal.registry.repo import Registry
    from seal.registry.store.objects import build_manifest

    seal, main_ids, exp_id = lines
    before = seal("log", "--all", "--json").stdout
    assert "at least two" in seal("merge", "main", expect=2).stderr
    assert "unknown --method" in seal("merge", "main", "exp", "--method", "nonsense", expect=2).stderr
    assert "one per input" in seal("merge", "main", "exp", "--weights", "1", expect=2).stderr
    assert "--threads" in seal("merge", "main", "exp", "--threads", "-1", expect=2).stderr
    # A version on another base (as a pull from elsewhere could bring) cannot be merged.
    reg = Registry.open(seal.cwd)
    other = base_record(name="someone/else", revision="r1", source="hub", location=None)
    main = seal.json("show", "main")
    with reg.write() as conn:
        insert_base(conn, other)
    foreign = reg.record(build_manifest(base=other["id"], parents=[], kind="import", status="accepted",
                                        adapter=main["adapter"], message="foreign"))
    reg.close()
    proc = seal("merge", "main", foreign[:12], expect=2)
    assert "another base" in proc.stderr and "Traceback" not in proc.stderr
    after = seal("log", "--all", "--json").stdout
    assert len(json.loads(after)) == len(json.loads(before)) + 1  # only the foreign version we made


def test_merge_refuses_unequal_ranks(lines, tmp_path):
    from adapters import build_lora_adapter

    seal, _, _ = lines
    folder = build_lora_adapter(_base_folder(seal), tmp_path / "rank4", seed=3, r=4)
    seal("checkout", "-b", "small", "main~3")
    seal("import", folder, "-m", "a rank-4 adapter")
    seal("checkout", "main")
    proc = seal("merge", "main", "small", "--method", "linear", expect=2)
    assert "equal ranks" in proc.stderr and "cat" in proc.stderr and "svd" in proc.stderr


def test_consolidate_three_edits(lines):
    seal, main_ids, _ = lines
    head = seal.json("show", "main")["id"]
    proc = seal("consolidate", "main~3..main", "--rank", "32", "--no-track", "--json", check=False)
    out = json.loads(proc.stdout)
    v = seal.json("show", out["candidates"][0]["id"])
    assert v["kind"] == "consolidate" and v["parents"][0] == head and v["consolidate"]["folded"][-1] == head
    checks = [g for g in v["audit"] if g["check"].startswith("consolidate_efficacy")]
    assert len(checks) == 3, v["audit"]
    # Every folded edit keeps its efficacy within the policy (0.05 by default).
    assert all(g["passed"] and g["value"] <= g["threshold"] for g in checks), checks
    assert proc.returncode == 0 and out["decision"]["accepted"], out
    assert seal.json("show", "main")["id"] == v["id"]
    assert seal("verify").returncode == 0
