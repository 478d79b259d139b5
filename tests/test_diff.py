"""`seal diff` in git's order (NEW relative to OLD: weights, config, scores, gates, data, --stat, --json) and `seal revert`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
SCHEMA = Path(__file__).parent.parent / "schemas" / "diff.schema.json"


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


def dense_stats(d_old: dict, d_new: dict, modules) -> dict:
    zero = {m: np.zeros_like((d_new.get(m) if m in d_new else d_old[m])) for m in modules}
    old = np.concatenate([d_old.get(m, zero[m]).ravel() for m in modules])
    new = np.concatenate([d_new.get(m, zero[m]).ravel() for m in modules])
    n_old, n_new = np.linalg.norm(old), np.linalg.norm(new)
    return {
        "diff_norm": np.linalg.norm(new - old), "norm_old": n_old, "norm_new": n_new,
        "cosine": float(old @ new / (n_old * n_new)) if n_old > 0 and n_new > 0 else None,
    }


def assert_close(row: dict, want: dict, what: str) -> None:
    for key, value in want.items():
        got = row[key]
        if value is None:
            assert got is None, (what, key, got)
        else:
            assert got == pytest.approx(value, rel=1e-6, abs=1e-12), (what, key, got, value)


def record(reg, *, message, parent="HEAD", adapter_of=None, adapter_dir=None, scores=(), audit=(), trigger=None,
           self_edit=None, branch="main"):
    """Record a hand-built version on ``branch`` through the Registry API, as the editor does."""
    from seal.registry.store.objects import build_manifest

    parent_id = reg.resolve(parent)
    adapter = reg.manifest(reg.resolve(adapter_of)).get("adapter") if adapter_of else None
    if adapter_dir is not None:
        adapter = {"weights": reg.store.put_file(adapter_dir / "adapter_model.safetensors"), "format": "peft-lora",
                   "config": json.loads((adapter_dir / "adapter_config.json").read_text())}
    manifest = build_manifest(
        base=reg.base_id(), parents=[parent_id], kind="edit", status="accepted", adapter=adapter,
        trigger=reg.store.put(trigger.encode()) if trigger else None,
        self_edit=reg.store.put(self_edit.encode()) if self_edit else None,
        scores=list(scores), audit=list(audit), author="tester", message=message,
    )
    ref = "refs/heads/" + branch
    return reg.record(manifest, ref=ref, expected=reg.read_ref(ref), reason=f"edit: {message}")


def gate(check, value, passed, **extra):
    return {"check": check, "value": value, "threshold": 0.05, "passed": passed, "detail": "", **extra}


def score(suite, metric, value, against=None, n=20):
    return {"suite": suite, "metric": metric, "against": against, "value": value, "n": n}


def check_schema(report: dict) -> dict:
    import jsonschema

    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    return report


# --- diff -------------------------------------------------------------------------------------

@sqlite_only
def test_diff_empty_with_itself_and_per_module_otherwise(registry, tiny_base):
    seal = registry
    a0, a1, _ = tiny_base["adapters"]
    seal("import", a0, "-m", "first")
    assert seal("diff", "main", "HEAD", "--exit-code", expect=0).stdout == ""
    report = check_schema(seal.json("diff", "HEAD", "HEAD"))
    assert report["differs"] is False and report["old"]["id"] == report["new"]["id"]
    assert report["weights"]["modules"] == [] and report["weights"]["total"]["diff_norm"] == 0.0
    assert report["config"] == report["scores"] == report["gates"] == report["data"]["versions"] == []
    # The root against nothing: no adapter on either side, so nothing differs either.
    root = check_schema(seal.json("diff", "HEAD~1"))
    assert root["old"] is None and root["new"]["kind"] == "root" and root["differs"] is False
    seal("diff", "HEAD~1", "--exit-code", expect=0)

    seal("import", a1, "-m", "second")
    lines = seal("diff", "HEAD", "--exit-code", expect=1).stdout.splitlines()   # OLD: HEAD's first parent
    assert lines[0].startswith("old ") and lines[0].endswith("first")
    assert lines[1].startswith("new ") and lines[1].endswith("second")
    # The summary comes first; the 4 module rows only after it.
    assert lines[3] == "summary" and lines[4].startswith("  weights  4 of 4 modules changed; ‖ΔW_new − ΔW_old‖ = ")
    rows = [i for i, line in enumerate(lines) if line.strip().startswith("model.layers.")]
    assert len(rows) == 4 and min(rows) > 5
    header = next(line for line in lines if line.split()[:2] == ["module", "layer"])
    assert "‖new − old‖" in header and "‖old‖" in header and "‖new‖" in header
    assert {len(lines[i]) for i in rows} == {len(header)}   # columns line up
    assert any(line.strip().startswith("total") for line in lines) and "config" not in lines

    # --all shows unchanged modules too, and an adapter compared with itself is exactly zero apart.
    full = check_schema(seal.json("diff", "HEAD~1", "HEAD~1", "--all"))
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
    for folder in (a0, a8, a1):
        seal("import", folder, "-m", folder.name)

    cases = [("HEAD~1", "HEAD", a8, a1), ("HEAD~2", "HEAD~1", a0, a8), ("HEAD~3", "HEAD", None, a1)]
    for old, new, folder_old, folder_new in cases:
        report = check_schema(seal.json("diff", old, new))
        assert report["differs"] is True
        d_old = dense_deltas(folder_old) if folder_old else {}
        d_new = dense_deltas(folder_new)
        modules = sorted(set(d_old) | set(d_new))
        w = report["weights"]
        assert sorted(m["module"] for m in w["modules"]) == modules
        for row in w["modules"]:
            assert_close(row, dense_stats(d_old, d_new, [row["module"]]), row["module"])
        for layer in w["layers"]:
            members = [m for m in modules if f"layers.{layer['layer']}." in m]
            assert_close(layer, dense_stats(d_old, d_new, members), f"layer {layer['layer']}")
        assert_close(w["total"], dense_stats(d_old, d_new, modules), "total")
        summary = report["summary"]["weights"]
        assert summary["diff_norm"] == w["total"]["diff_norm"] and summary["modules_changed"] == len(modules)
    changed = {c["field"]: (c["old"], c["new"]) for c in seal.json("diff", "HEAD~2", "HEAD~1")["config"]}
    assert changed["r"] == (4, 8) and changed["lora_alpha"] == (8, 12)
    assert changed["use_rslora"] == (False, True) and changed["target_modules"] == (["q_proj", "v_proj"], ["k_proj", "q_proj"])
    assert "  config   changed: r, lora_alpha, target_modules, use_rslora" in seal("diff", "HEAD~2", "HEAD~1").stdout


@sqlite_only
def test_diff_follows_git_order(registry, reg, tiny_base):
    """`seal diff HEAD~2 HEAD` shows what the last two edits added, with the signs git users expect."""
    from seal.registry.diff import diff_revision, diff_versions

    seal = registry
    a0, a1, a2 = tiny_base["adapters"]
    v0 = record(reg, message="start", adapter_dir=a0, scores=[score("efficacy", "f1", 0.4), score("retention", "accuracy", 0.9)],
                audit=[gate("retention_vs_parent", 0.0, True)])
    v1 = record(reg, message="edit one", adapter_dir=a1, scores=[score("efficacy", "f1", 0.5), score("retention", "accuracy", 0.85)],
                audit=[gate("retention_vs_parent", 0.05, True)], trigger="passage one\n")
    v2 = record(reg, message="edit two", adapter_dir=a2, scores=[score("efficacy", "f1", 0.7), score("retention", "accuracy", 0.8)],
                audit=[gate("retention_vs_parent", 0.1, False, ci_low=0.06, ci_high=0.14, n=200)], trigger="passage two\n")

    fwd = check_schema(seal.json("diff", "HEAD~2", "HEAD"))
    assert (fwd["old"]["id"], fwd["new"]["id"]) == (v0, v2)
    deltas = {(s["suite"], s["metric"]): round(s["delta"], 9) for s in fwd["summary"]["scores"]}
    assert deltas == {("efficacy", "f1"): 0.3, ("retention", "accuracy"): -0.1}
    assert fwd["summary"]["gates_changed"] == [{"check": "retention_vs_parent", "old": "pass", "new": "fail"}]
    assert [(d["side"], d["id"]) for d in fwd["data"]["versions"]] == [("new", v2), ("new", v1)]
    assert (fwd["summary"]["versions_only_in_new"], fwd["summary"]["versions_only_in_old"]) == (2, 0)
    norms = {k: dense_stats(dense_deltas(a0), dense_deltas(a2), sorted(dense_deltas(a0)))[k] for k in ("norm_old", "norm_new")}
    assert_close(fwd["weights"]["total"], norms, "sides")

    back = check_schema(seal.json("diff", "HEAD", "HEAD~2"))   # the other way round: every sign flips
    assert {(s["suite"], s["metric"]): round(s["delta"], 9) for s in back["summary"]["scores"]} == {k: -v for k, v in deltas.items()}
    assert [(d["side"], d["id"]) for d in back["data"]["versions"]] == [("old", v2), ("old", v1)]
    assert back["weights"]["total"]["norm_old"] == fwd["weights"]["total"]["norm_new"]

    text = seal("diff", "HEAD~2", "HEAD").stdout
    assert "efficacy.f1                  0.4 → 0.7  (difference +0.3)" in text
    assert "retention_vs_parent          pass → FAIL" in text
    assert "FAIL 0.1 [0.06, 0.14] (threshold 0.05)" in text   # the gate's interval, where it has one
    assert "scores (difference = new − old)" in text and "  + " + v1[:12] in text
    # One revision: REV against its first parent, the same as naming both.
    one, both = diff_revision(reg, "HEAD"), diff_versions(reg, "HEAD~1", "HEAD")
    assert one["old"]["id"] == v1 and one["summary"] == both["summary"] and one["scores"] == both["scores"]


@sqlite_only
def test_diff_scores_gates_and_data(registry, reg, tiny_base):
    seal = registry
    seal("import", tiny_base["adapters"][0], "-m", "first")
    v1 = record(
        reg, message="learn the passage", adapter_of="HEAD",
        scores=[score("qa", "acc", 0.5), score("anchors", "acc", 0.9, n=50)],
        audit=[gate("drift_kl", 0.01, True), gate("safety", 0.0, True)],
        trigger="line one of the passage\nline two\n\nline three\nline four is not shown\n",
        self_edit='{"prompt": "q1", "completion": "a1"}\n{"prompt": "q2", "completion": "a2"}\n',
    )
    v2 = record(
        reg, message="second pass", adapter_of="HEAD",   # the same adapter: only records differ
        scores=[score("qa", "acc", 0.75), score("anchors", "acc", 0.9, n=50), score("qa", "acc", 0.25, against="parent")],
        audit=[gate("drift_kl", 0.09, False), gate("safety", 0.0, True)],
        trigger="another passage\n",
    )
    report = check_schema(seal.json("diff", v1, v2))
    assert report["differs"] is True and report["weights"]["changed"] is False and report["config"] == []
    scores = {(s["suite"], s["metric"], s["against"]): s for s in report["scores"]}
    assert set(scores) == {("qa", "acc", None), ("qa", "acc", "parent")}   # equal anchors.acc hidden
    assert scores[("qa", "acc", None)]["delta"] == pytest.approx(0.25)
    assert scores[("qa", "acc", "parent")]["old"] is None and scores[("qa", "acc", "parent")]["delta"] is None
    assert [(g["check"], g["old"]["passed"], g["new"]["passed"]) for g in report["gates"]] == [("drift_kl", True, False)]
    assert [(d["side"], d["id"]) for d in report["data"]["versions"]] == [("new", v2)]
    assert report["data"]["versions"][0]["trigger"]["lines"] == ["another passage"]
    assert report["data"]["versions"][0]["self_edit"] is None

    full = check_schema(seal.json("diff", v1, v2, "--all"))
    assert len(full["scores"]) == 3 and {g["check"] for g in full["gates"]} == {"drift_kl", "safety"}

    text = seal("diff", v1, v2, "--exit-code", expect=1).stdout
    assert "scores (difference = new − old)" in text and "+0.25" in text and "anchors.acc" not in text
    assert "gates (verdict changed)" in text and "FAIL 0.09 (threshold 0.05)" in text and "weights per module" not in text

    # A side branch from v1 with its own trigger: the data section lists both sides of OLD...NEW.
    v3 = record(reg, message="side edit", parent=v1, adapter_of=v1, branch="side", trigger="side passage\n")
    both = check_schema(seal.json("diff", v3, v2))
    assert [(d["side"], d["id"]) for d in both["data"]["versions"]] == [("new", v2), ("old", v3)]
    # v1 against its first parent. Its trigger preview stops after three non-blank lines.
    first = check_schema(seal.json("diff", v1))
    assert first["old"]["message"] == "first" and [d["id"] for d in first["data"]["versions"]] == [v1]
    assert first["data"]["versions"][0]["trigger"]["lines"] == ["line one of the passage", "line two", "line three"]
    assert len(first["data"]["versions"][0]["self_edit"]["lines"]) == 2
    text = seal("diff", v1).stdout
    assert "| line three" in text and "line four" not in text and first["data"]["versions"][0]["trigger"]["digest"] in text


@sqlite_only
def test_diff_stat_is_the_per_module_summary(registry, tiny_base, tmp_path):
    from adapters import build_lora_adapter

    seal = registry
    a0, a1, _ = tiny_base["adapters"]
    ak = build_lora_adapter(tiny_base["base"], tmp_path / "ak", seed=3, targets=("q_proj", "k_proj"))
    for folder in (a0, a1, ak):
        seal("import", folder, "-m", folder.name)
    lines = seal("diff", "HEAD~2", "HEAD~1", "--stat").stdout.splitlines()
    assert len(lines) == 5 and lines[-1].startswith(" 4 of 4 modules changed, ‖ΔW_new − ΔW_old‖ = ")
    rows = [line.split("|") for line in lines[:-1]]
    assert all(name.strip().startswith("model.layers.") for name, _ in rows)
    bars = [cells.split()[1] for _, cells in rows]
    assert max(map(len, bars)) == 40 and all(set(b) <= {"+", "-"} for b in bars)
    # q_proj changes, v_proj goes away (-), k_proj comes in (+): signs follow OLD -> NEW.
    moved = {name.strip().rsplit(".", 1)[-1]: cells.split()[1][0] for name, cells in
             (line.split("|") for line in seal("diff", "HEAD~1", "HEAD", "--stat").stdout.splitlines()[:-1])}
    assert moved["v_proj"] == "-" and moved["k_proj"] == "+"
    assert seal("diff", "HEAD", "HEAD", "--stat").stdout == ""
    assert "summary" not in seal("diff", "HEAD~1", "HEAD", "--stat").stdout


@sqlite_only
def test_diff_json_schema_is_strict(registry, tiny_base):
    import jsonschema

    seal = registry
    seal("import", tiny_base["adapters"][0], "-m", "first")
    report = check_schema(seal.json("diff", "HEAD~1", "HEAD", "--all"))
    for broken in ({k: v for k, v in report.items() if k != "summary"}, {**report, "a": report["new"]},
                   {**report, "data": {**report["data"], "versions": [{"side": "a"}]}}):
        with pytest.raises(jsonschema.ValidationError):
            check_schema(broken)


@sqlite_only
def test_diff_previews_are_printable(registry, reg, tiny_base):
    """A hostile trigger cannot drive the terminal: escapes and bidi overrides are replaced."""
    seal = registry
    seal("import", tiny_base["adapters"][0], "-m", "first")
    vid = record(reg, message="hostile", adapter_of="HEAD",
                 trigger="\x1b]0;owned\x07title\n\x1b[2Jclear \u202eevil\n" + "x" * 5_000_000)
    report = seal.json("diff", vid)
    lines = report["data"]["versions"][0]["trigger"]["lines"]
    assert lines[0] == "\ufffd]0;owned\ufffdtitle" and lines[1] == "\ufffd[2Jclear \ufffdevil"
    assert len(lines[2]) == 120 and lines[2].endswith("…")   # only the head of a 5 MB blob is read
    text = seal("diff", vid).stdout
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    # A blob gone from the store is named, not fatal.
    reg.store.path_of(reg.manifest(vid)["trigger"]).unlink()
    assert "(missing from the object store)" in seal("diff", vid).stdout


def test_diff_needs_no_model_library(registry, tiny_base):
    seal = registry
    seal("import", tiny_base["adapters"][0], "-m", "first")
    seal("import", tiny_base["adapters"][1], "-m", "second")
    env = {**seal.env, "PYTHONPROFILEIMPORTTIME": "1"}
    from conftest import Seal

    proc = Seal(seal.cwd, env, process=True).run("diff", "HEAD~1", "HEAD")
    assert proc.returncode == 0 and proc.stdout.splitlines()[3] == "summary", proc.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert not loaded & {"torch", "transformers", "peft", "mlflow", "sqlalchemy"}


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
    assert head["revert"] == {"of": second["id"], "to": first["id"], "reason": "drifted on the anchors",
                              "scores_from": first["id"]}
    newest = seal.json("reflog", "main")[0]
    assert newest["old"] == second["id"] and newest["new"] == head["id"] and "drifted on the anchors" in newest["reason"]
    # The state is back where it was: no difference from `first`, though `second` stays in history.
    seal("diff", first["id"], "HEAD", "--exit-code", expect=0)
    assert seal("diff", second["id"], "HEAD", "--exit-code", expect=1).stdout

    # Back to the bare base (--to the root): the new version has no adapter. Reverting that
    # revert brings `first`'s adapter back again.
    bare = seal.json("revert", "HEAD", "--to", "HEAD~3")
    assert bare["adapter"] is None and bare["to"] == first["parent"] and bare["parent"] == head["id"]
    again = seal.json("revert", "HEAD")
    assert again["adapter"] == blob_of(a0) and again["parent"] == bare["id"] and again["ref"] == "main"
    assert seal("verify").returncode == 0


def test_revert_refusals_write_nothing(registry, reg, tiny_base):
    seal = registry
    seal("import", tiny_base["adapters"][0], "-m", "first")
    seal("import", tiny_base["adapters"][1], "-m", "second")
    record(reg, message="side", parent="HEAD~1", adapter_of="HEAD", branch="exp")

    def snapshot():
        return [e.id for e in reg.log(all=True)], reg.reflog()

    before = snapshot()
    r = seal("revert", "exp", expect=2)
    assert "not an ancestor of HEAD" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert "is the root" in seal("revert", "HEAD~2", expect=2).stderr
    assert "is not an ancestor of" in seal("revert", "HEAD", "--to", "exp", expect=2).stderr
    assert "unknown revision" in seal("revert", "nosuch", expect=2).stderr
    assert snapshot() == before
    # And from the side branch, its own history is revertible.
    seal("checkout", "exp")
    reverted = seal.json("revert", "HEAD")
    assert reverted["ref"] == "exp" and reverted["adapter"] == blob_of(tiny_base["adapters"][0])
