"""`seal diff` (weights, config, scores, gates, data) and `seal revert`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# --- helpers ----------------------------------------------------------------------------------

def dense_deltas(folder) -> dict:
    """{module: ΔW = scale·B@A} built densely from a PEFT folder, as an independent check."""
    from safetensors.numpy import load_file

    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    out = {}
    for key, A in tensors.items():
        if ".lora_A." not in key:
            continue
        module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        B = tensors[key.replace(".lora_A.", ".lora_B.")]
        out[module] = scale * (B.astype(np.float64) @ A.astype(np.float64))
    return out


def dense_stats(da: dict, db: dict, modules) -> dict:
    zero = {m: np.zeros_like((da.get(m) if m in da else db[m])) for m in modules}
    a = np.concatenate([da.get(m, zero[m]).ravel() for m in modules])
    b = np.concatenate([db.get(m, zero[m]).ravel() for m in modules])
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return {
        "diff_norm": np.linalg.norm(a - b), "norm_a": na, "norm_b": nb,
        "cosine": float(a @ b / (na * nb)) if na > 0 and nb > 0 else None,
    }


def assert_close(row: dict, want: dict, what: str) -> None:
    for key, value in want.items():
        got = row[key]
        if value is None:
            assert got is None, (what, key, got)
        else:
            assert got == pytest.approx(value, rel=1e-6, abs=1e-12), (what, key, got, value)


def record(seal, *, message, parent="HEAD", adapter_of=None, scores=(), audit=(), trigger=None, self_edit=None,
           branch="main"):
    """Record a hand-built version on ``branch`` through the registry's plumbing, as the editor does."""
    from seal.registry import refs as R
    from seal.registry.objects import build_manifest
    from seal.registry.repository import Repository, load_manifest, record_version
    from seal.registry.revisions import resolve_revision

    repo = Repository.find(seal.cwd)
    with repo.transaction() as conn:
        parent_id = resolve_revision(conn, parent)
        adapter = load_manifest(conn, resolve_revision(conn, adapter_of)).get("adapter") if adapter_of else None
        manifest = build_manifest(
            base=repo.base_id(conn), parents=[parent_id], kind="edit", status="accepted",
            adapter=adapter,
            trigger=repo.store.put(trigger.encode()) if trigger else None,
            self_edit=repo.store.put(self_edit.encode()) if self_edit else None,
            scores=list(scores), audit=list(audit), author="tester", message=message,
        )
        vid = record_version(repo, conn, manifest)
        old = R.peel(conn, R.HEADS + branch)
        R.compare_and_swap(conn, R.HEADS + branch, old=old, new=vid, reason=f"edit: {message}")
    repo.engine.dispose()
    return vid


# --- diff -------------------------------------------------------------------------------------

@sqlite_only
def test_diff_empty_with_itself_and_per_module_otherwise(registry, tiny_base):
    seal = registry
    a0, a1, _ = tiny_base["adapters"]
    seal("import", a0, "-m", "first")
    same = seal("diff", "HEAD", "main", "--exit-code", expect=0)
    assert same.stdout == ""
    report = seal.json("diff", "HEAD", "HEAD")
    assert report["differs"] is False
    assert report["weights"]["modules"] == [] and report["weights"]["total"]["diff_norm"] == 0.0
    assert report["config"] == report["scores"] == report["gates"] == report["data"] == []
    # The root against nothing: no adapter on either side, so nothing differs either.
    seal("diff", "HEAD~1", "--exit-code", expect=0)

    seal("import", a1, "-m", "second")
    out = seal("diff", "HEAD", "--exit-code", expect=1).stdout   # B defaults to HEAD's first parent
    lines = out.splitlines()
    assert lines[0].startswith("diff A ") and "second" in lines[0] and "first" in lines[1]
    assert "weights: 4 of 4 modules changed" in out
    header = next(l for l in lines if l.split()[:2] == ["module", "layer"])
    rows = [l for l in lines if l.strip().startswith("model.layers.")]
    assert len(rows) == 4 and "model.layers.1.self_attn.v_proj" in out
    # Columns line up: every row's numbers end where the header's columns end.
    assert {len(r) for r in rows} == {len(header)}
    assert any(l.strip().startswith("total") for l in lines)
    assert "config" not in lines   # same rank, alpha and targets

    # --all shows unchanged modules too, and an adapter compared with itself is exactly zero apart.
    full = seal.json("diff", "HEAD~1", "HEAD~1", "--all")
    assert len(full["weights"]["modules"]) == 4 and full["differs"] is False
    assert all(m["diff_norm"] == 0.0 and m["cosine"] == 1.0 for m in full["weights"]["modules"])


@sqlite_only
def test_diff_figures_match_dense(registry, tiny_base, tmp_path):
    from adapters import build_lora_adapter

    seal = registry
    a0, a1, _ = tiny_base["adapters"]
    # Rank 8 on other modules, with rsLoRA scaling: shapes, module sets and scales all differ.
    a8 = build_lora_adapter(tiny_base["base"], tmp_path / "a8", seed=7, r=8, targets=("q_proj", "k_proj"))
    config = json.loads((a8 / "adapter_config.json").read_text())
    config.update(use_rslora=True, lora_alpha=12)
    (a8 / "adapter_config.json").write_text(json.dumps(config))
    seal("import", a0, "-m", "a0")
    seal("import", a8, "-m", "a8")
    seal("import", a1, "-m", "a1")

    cases = [("HEAD", "HEAD~1", a1, a8), ("HEAD~1", "HEAD~2", a8, a0), ("HEAD", "HEAD~3", a1, None)]
    for rev_a, rev_b, folder_a, folder_b in cases:
        report = seal.json("diff", rev_a, rev_b)
        assert report["differs"] is True
        da = dense_deltas(folder_a)
        db = dense_deltas(folder_b) if folder_b else {}
        modules = sorted(set(da) | set(db))
        w = report["weights"]
        assert sorted(m["module"] for m in w["modules"]) == modules
        for row in w["modules"]:
            assert_close(row, dense_stats(da, db, [row["module"]]), row["module"])
        for layer in w["layers"]:
            members = [m for m in modules if f"layers.{layer['layer']}." in m]
            assert_close(layer, dense_stats(da, db, members), f"layer {layer['layer']}")
        assert_close(w["total"], dense_stats(da, db, modules), "total")
    changed = {c["field"]: (c["a"], c["b"]) for c in seal.json("diff", "HEAD~1", "HEAD~2")["config"]}
    assert changed["r"] == (8, 4) and changed["lora_alpha"] == (12, 8)
    assert changed["use_rslora"] == (True, False) and changed["target_modules"] == (["k_proj", "q_proj"], ["q_proj", "v_proj"])


@sqlite_only
def test_diff_scores_gates_and_data(registry, tiny_base):
    seal = registry
    seal("import", tiny_base["adapters"][0], "-m", "first")
    gate = lambda check, value, passed: {"check": check, "value": value, "threshold": 0.05, "passed": passed, "detail": ""}
    v1 = record(
        seal, message="learn the passage", adapter_of="HEAD",
        scores=[{"suite": "qa", "metric": "acc", "against": None, "value": 0.5, "n": 20},
                {"suite": "anchors", "metric": "acc", "against": None, "value": 0.9, "n": 50}],
        audit=[gate("drift_kl", 0.01, True), gate("safety", 0.0, True)],
        trigger="line one of the passage\nline two\nline three\nline four is not shown\n",
        self_edit='{"prompt": "q1", "completion": "a1"}\n{"prompt": "q2", "completion": "a2"}\n',
    )
    v2 = record(
        seal, message="second pass", adapter_of="HEAD",   # the same adapter: only records differ
        scores=[{"suite": "qa", "metric": "acc", "against": None, "value": 0.75, "n": 20},
                {"suite": "anchors", "metric": "acc", "against": None, "value": 0.9, "n": 50},
                {"suite": "qa", "metric": "acc", "against": "parent", "value": 0.25, "n": 20}],
        audit=[gate("drift_kl", 0.09, False), gate("safety", 0.0, True)],
        trigger="another passage\n",
    )
    report = seal.json("diff", v2, v1)
    assert report["differs"] is True and report["weights"]["changed"] is False and report["config"] == []
    scores = {(s["suite"], s["metric"], s["against"]): s for s in report["scores"]}
    assert set(scores) == {("qa", "acc", None), ("qa", "acc", "parent")}   # equal anchors.acc hidden
    assert scores[("qa", "acc", None)]["delta"] == pytest.approx(0.25)
    assert scores[("qa", "acc", "parent")]["b"] is None and scores[("qa", "acc", "parent")]["delta"] is None
    assert [(g["check"], g["a"]["passed"], g["b"]["passed"]) for g in report["gates"]] == [("drift_kl", False, True)]
    assert [(d["side"], d["id"]) for d in report["data"]] == [("a", v2)]
    assert report["data"][0]["trigger"]["lines"] == ["another passage"] and report["data"][0]["self_edit"] is None

    full = seal.json("diff", v2, v1, "--all")
    assert len(full["scores"]) == 3 and {g["check"] for g in full["gates"]} == {"drift_kl", "safety"}

    text = seal("diff", v2, v1, "--exit-code", expect=1).stdout
    assert "scores (delta = A − B)" in text and "+0.25" in text and "anchors.acc" not in text
    assert "gates (verdict changed)" in text and "FAIL 0.09 (threshold 0.05)" in text and "weights" not in text

    # A side branch from v1 with its own trigger: the data section lists both sides of A...B.
    v3 = record(seal, message="side edit", parent=v1, adapter_of=v1, branch="side", trigger="side passage\n")
    both = seal.json("diff", v2, v3)
    assert [(d["side"], d["id"]) for d in both["data"]] == [("a", v2), ("b", v3)]
    # v1 is A's first parent: the default B. Its trigger preview stops after three lines.
    first = seal.json("diff", v1)
    assert first["b"]["message"] == "first" and [d["id"] for d in first["data"]] == [v1]
    assert first["data"][0]["trigger"]["lines"] == ["line one of the passage", "line two", "line three"]
    assert len(first["data"][0]["self_edit"]["lines"]) == 2
    text = seal("diff", v1).stdout
    assert "| line three" in text and "line four" not in text and first["data"][0]["trigger"]["digest"] in text


# --- revert -----------------------------------------------------------------------------------

def blob_of(folder) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()


@sqlite_only
def test_revert(registry, tiny_base):
    seal = registry
    a0, a1, _ = tiny_base["adapters"]
    first = seal.json("import", a0, "-m", "first")
    second = seal.json("import", a1, "-m", "second")
    said = seal("revert", "HEAD", "-m", "drifted on the anchors").stdout
    assert said.startswith("[main ") and f"Revert {second['id'][:12]}: drifted on the anchors" in said

    head = seal.json("show", "HEAD")
    assert head["kind"] == "revert" and head["status"] == "accepted" and head["parents"] == [second["id"]]
    assert head["adapter"]["weights"] == blob_of(a0) != blob_of(a1)
    assert head["message"] == f"Revert {second['id'][:12]}: drifted on the anchors"
    assert head["revert"] == {"of": second["id"], "to": first["id"], "reason": "drifted on the anchors"}
    newest = seal.json("reflog", "main")[0]
    assert newest["old"] == second["id"] and newest["new"] == head["id"] and "drifted on the anchors" in newest["reason"]
    # The state is back where it was: no difference from `first`, though `second` stays in history.
    seal("diff", "HEAD", first["id"], "--exit-code", expect=0)

    # Back to the bare base (--to the root): the new version has no adapter. Reverting that
    # revert brings `first`'s adapter back again.
    bare = seal.json("revert", "HEAD", "--to", "HEAD~3")
    assert bare["adapter"] is None and bare["to"] == first["parent"] and bare["parent"] == head["id"]
    again = seal.json("revert", "HEAD")
    assert again["adapter"] == blob_of(a0) and again["parent"] == bare["id"] and again["ref"] == "main"
    assert seal("verify").returncode == 0


def test_revert_refusals_write_nothing(registry, tiny_base, monkeypatch):
    from seal.registry import porcelain
    from seal.registry.repository import Repository

    seal = registry
    if "SEAL_DATABASE_URL" in seal.env:   # the in-process calls below use the same database
        monkeypatch.setenv("SEAL_DATABASE_URL", seal.env["SEAL_DATABASE_URL"])
    seal("import", tiny_base["adapters"][0], "-m", "first")
    seal("import", tiny_base["adapters"][1], "-m", "second")
    record(seal, message="side", parent="HEAD~1", adapter_of="HEAD", branch="exp")
    repo = Repository.find(seal.cwd)

    def snapshot():
        return porcelain.log(repo, all_versions=True), porcelain.reflog_entries(repo)

    before = snapshot()
    r = seal("revert", "exp", expect=2)
    assert "not an ancestor of HEAD" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert "is the root" in seal("revert", "HEAD~2", expect=2).stderr
    assert "is not an ancestor of" in seal("revert", "HEAD", "--to", "exp", expect=2).stderr
    assert "unknown revision" in seal("revert", "nosuch", expect=2).stderr
    assert snapshot() == before
    repo.engine.dispose()
    # And from the side branch, its own history is revertible.
    seal("checkout", "exp")
    reverted = seal.json("revert", "HEAD")
    assert reverted["ref"] == "exp" and reverted["adapter"] == blob_of(tiny_base["adapters"][0])
