"""A user's mistake: one line on stderr, exit 2, no traceback, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def _snapshot(seal):
    return seal("log", "--all", "--json").stdout, seal("reflog", "--json").stdout


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in err, err


def test_import_refusals(registry, tiny_base, tmp_path):
    seal = registry
    seal("import", tiny_base["adapters"][0])
    before = _snapshot(seal)
    objects_before = sorted(p.name for p in (seal.cwd / ".seal" / "objects").rglob("*"))

    _one_line_error(seal("import", tmp_path / "missing", check=False), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(seal("import", empty, check=False), "adapter_config.json")

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_base["adapters"][1], pickled)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    _one_line_error(seal("import", pickled, check=False), "pickle", "adapter_model.bin")

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_base["adapters"][1] / "adapter_config.json", no_weights)
    _one_line_error(seal("import", no_weights, check=False), "adapter_model.safetensors")

    prefix = tmp_path / "prefix-tuning"
    shutil.copytree(tiny_base["adapters"][1], prefix)
    (prefix / "adapter_config.json").write_text('{"peft_type": "PREFIX_TUNING"}')
    _one_line_error(seal("import", prefix, check=False), "LoRA")

    broken = tmp_path / "broken"
    shutil.copytree(tiny_base["adapters"][1], broken)
    (broken / "adapter_config.json").write_text("{not json")
    _one_line_error(seal("import", broken, check=False), "not valid JSON")

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_base["adapters"][1], truncated)
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    _one_line_error(seal("import", truncated, check=False), "truncated")

    other_base = tmp_path / "other-base"
    shutil.copytree(tiny_base["adapters"][1], other_base)
    cfg = (other_base / "adapter_config.json").read_text()
    (other_base / "adapter_config.json").write_text(cfg.replace(str(tiny_base["base"]), "meta-llama/Llama-3-8B"))
    _one_line_error(seal("import", other_base, check=False), "meta-llama/Llama-3-8B")

    assert _snapshot(seal) == before
    assert sorted(p.name for p in (seal.cwd / ".seal" / "objects").rglob("*")) == objects_before


def test_revision_errors(registry, tiny_base):
    seal = registry
    for a in tiny_base["adapters"]:
        seal("import", a)
    before = _snapshot(seal)
    _one_line_error(seal("show", "nosuchbranch", check=False), "unknown revision")
    _one_line_error(seal("checkout", "HEAD~9", check=False), "past the root")
    _one_line_error(seal("show", "HEAD^2", check=False), "^2 does not exist")
    _one_line_error(seal("show", "ab", check=False), "too short")
    _one_line_error(seal("show", "HEAD~x", check=False), "cannot parse")
    _one_line_error(seal("tag", "bad name", check=False), "not a valid tag name")
    _one_line_error(seal("branch", "main", check=False), "already exists")
    assert _snapshot(seal) == before


def test_ambiguous_prefix_lists_candidates(registry, reg, tiny_base):
    """Many versions make a shared 4-hex prefix certain; the error names each candidate."""
    from seal.registry.errors import RevisionError

    seal = registry
    seal("import", tiny_base["adapters"][0])
    _bulk_versions(reg, 2000)
    with reg.read() as c:
        ids = sorted(r[0] for r in c.all("SELECT id FROM versions"))
    pairs = [(a, b) for a, b in zip(ids, ids[1:]) if a[:4] == b[:4]]
    assert pairs, "2000 random ids share a 4-digit prefix with near certainty"
    a, b = pairs[0]
    with pytest.raises(RevisionError) as info:
        reg.resolve(a[:4])
    assert a[:12] in str(info.value) and b[:12] in str(info.value)
    proc = seal("show", a[:4], check=False)
    _one_line_error(proc, "ambiguous", a[:12], b[:12])


def _bulk_versions(reg, n):
    from seal.registry.store.objects import build_manifest

    base = reg.base_id()
    reg.record_many([build_manifest(base=base, parents=[], kind="import", status="rejected", message=f"bulk {i}")
                     for i in range(n)])


def test_not_a_registry(tmp_path, seal):
    before = sorted(tmp_path.iterdir())
    for args in (["log"], ["show", "HEAD"], ["verify"], ["checkout", "HEAD"], ["import", tmp_path]):
        _one_line_error(seal(*args, check=False), "not inside a seal registry")
    _one_line_error(seal("--repo", tmp_path / "nowhere", "log", check=False), "not a seal registry")
    assert sorted(tmp_path.iterdir()) == before


def test_init_refusals(registry, tiny_base, tmp_path):
    seal = registry
    _one_line_error(seal("init", ".", "--base", tiny_base["base"], check=False), "already a seal registry")
    _one_line_error(seal("init", tmp_path / "x", "--base", tmp_path / "nomodel.gguf", check=False), "neither an existing file")
    assert not (tmp_path / "x" / ".seal").exists()
    assert not [p for p in (tmp_path / "x").iterdir()] if (tmp_path / "x").exists() else True


# --- hostile cases (issue 21): each gets its right answer ---------------------------------------

def test_import_of_a_folder_whose_name_is_not_utf8(registry, tiny_base, tmp_path):
    import os

    folder = Path(os.fsdecode(bytes(tmp_path) + b"/adapter-\xff"))
    shutil.copytree(tiny_base["adapters"][0], folder)
    registry("import", folder)
    assert registry.json("log")[0]["message"] == "import adapter-\ufffd"
    _one_line_error(registry("import", folder, "-m", os.fsdecode(b"caf\xe9"), check=False), "UTF-8")


def test_passage_json_nested_100000_deep(registry):
    before = _snapshot(registry)
    (registry.cwd / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    _one_line_error(registry("edit", "--passage", "deep.json", check=False), "deep.json", "nested too deeply")
    (registry.cwd / "deep.jsonl").write_text('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    _one_line_error(registry("edit", "--examples", "deep.jsonl", check=False), "deep.jsonl line 1", "nested")
    assert _snapshot(registry) == before


def test_a_stray_file_in_the_object_store_is_named_by_verify_and_kept_by_gc(registry, tiny_base):
    registry("import", tiny_base["adapters"][0])
    store = registry.cwd / ".seal" / "objects" / "sha256"
    some = next(p for p in store.iterdir() if p.is_dir())
    strays = [some / "notes.txt", store / "README"]
    for path in strays:
        path.write_text("mine")
    proc = registry("verify", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    faults = json.loads(registry("verify", "--json", check=False).stdout)["faults"]
    assert {f["object"] for f in faults} == {f"object store file {p}" for p in strays}
    registry("gc", "--grace", "0")
    assert all(p.read_text() == "mine" for p in strays)


def test_config_without_base_is_refused_and_a_wrong_base_fails_verify(registry, tiny_base):
    config = registry.cwd / ".seal" / "config.toml"
    good = config.read_text()
    before = _snapshot(registry)
    config.write_text("")
    _one_line_error(registry("import", tiny_base["adapters"][0], "-m", "x", check=False), "[base] id")
    config.write_text(good)
    assert _snapshot(registry) == before
    base_id = good.split('id = "')[1][:64]
    config.write_text(good.replace(base_id, "0" * 64))
    proc = registry("verify", "--json", check=False)
    assert proc.returncode == 1 and any(f["object"] == "config.toml" for f in json.loads(proc.stdout)["faults"])
    config.write_text(good.replace('name = "', 'name = "other-'))
    assert registry("verify", check=False).returncode == 1
    config.write_text(good)
    assert registry("verify").returncode == 0


def test_key_trust_name_with_control_characters(registry, tmp_path):
    from seal.registry.store.signing import create_key, format_trust_line, public_key_hex

    public = public_key_hex(create_key(tmp_path / "other.key"))
    trust = registry.cwd / ".seal" / "allowed_signers"
    before = trust.read_bytes()
    for name in ("evil\x1b[31mred", "bell\x07", "hash # comment", "rtl\u202eoverride"):
        _one_line_error(registry("key", "trust", public, "--name", name, check=False), "--name")
    assert trust.read_bytes() == before
    registry("key", "trust", public, "--name", "Alice  Smith")
    assert trust.read_text().endswith(" Alice Smith\n")
    # A name from elsewhere (a pulled record) is escaped, never written raw.
    assert format_trust_line(public, "x\x1b]0;title\x07 # y").endswith(" x?]0;title? ? y")


BROKEN_POLICIES = {
    "not TOML": lambda t: t + "\n[[[broken",
    "unknown gate": lambda t: t.replace("[gates]", "[gates]\nno_such_gate = 1.0"),
    "a string for a number": lambda t: t.replace("kl_vs_base_max = 2.0", 'kl_vs_base_max = "two"'),
    "infinity": lambda t: t.replace("kl_vs_base_max = 2.0", "kl_vs_base_max = inf"),
    "negative window": lambda t: t.replace("weight_norm_window = 5", "weight_norm_window = -1"),
    "a list for a number": lambda t: t.replace("js_vs_parent_max = 0.2", "js_vs_parent_max = [0.2]"),
    "unknown section": lambda t: t + "\n[bogus]\nx = 1\n",
}


def test_broken_policy_is_refused_before_the_model_loads_and_writes_no_blob(registry, monkeypatch):
    policy = registry.cwd / ".seal" / "policy.toml"
    good = policy.read_text()
    (registry.cwd / "p.txt").write_text("# Zorblat\nThe Zorblat river flows into the northern sea.\n")
    objects = registry.cwd / ".seal" / "objects"
    blobs = sorted(p.name for p in objects.rglob("*"))
    before = _snapshot(registry)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained",
                        lambda *a, **k: pytest.fail("the model was loaded"))
    for what, breaks in BROKEN_POLICIES.items():
        policy.write_text(breaks(good))
        proc = registry("edit", "--passage", "p.txt", "-k", "1", check=False)
        _one_line_error(proc, "policy")
        assert sorted(p.name for p in objects.rglob("*")) == blobs, what
    policy.write_text(good)
    assert _snapshot(registry) == before


@pytest.mark.postgres
def test_concurrent_inits_on_one_new_postgres_database(pg_admin_url, tiny_base, tmp_path):
    """Four `seal init` on one new database at once: one wins, the others exit 2 pointing to `seal clone`."""
    import subprocess
    import sys
    import uuid

    from pgcluster import create_database

    url = create_database(pg_admin_url, "race_" + uuid.uuid4().hex[:8])
    procs = [subprocess.Popen([sys.executable, "-m", "seal.cli", "init", str(tmp_path / f"r{i}"), "--base",
                               str(tiny_base["base"]), "--db", url], env={**__import__("os").environ,
                              "SEAL_ACTOR": "tester"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2, 2, 2], results
    for i, (code, err) in enumerate(results):
        if code == 2:
            assert "seal clone" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
            assert not (tmp_path / f"r{i}" / ".seal").exists()
    winner = next(i for i, (code, _) in enumerate(results) if code == 0)
    seal = __import__("conftest").Seal(tmp_path / f"r{winner}", {"SEAL_ACTOR": "tester", "SEAL_DATABASE_URL": url})
    assert seal("verify").returncode == 0


def test_an_edit_on_an_unborn_branch_raises_no_head_with_its_ref(registry, reg, monkeypatch):
    """HEAD on a branch with no version: NoHead, a LookupError that names the ref; the CLI says it in one line."""
    from seal.editor.learn import LearnRequest, starting_parent
    from seal.editor.loop import prepare_edit
    from seal.editor.request import EditRequest
    from seal.registry.errors import NoHead, UserError

    reg.move_ref("HEAD", new="ref: refs/heads/unborn", expected=reg.read_ref("HEAD"), reason="test: an unborn branch")
    (registry.cwd / "p.txt").write_text("# Zorblat\nThe Zorblat river flows into the northern sea.\n")
    before = _snapshot(registry)
    with pytest.raises(NoHead) as caught:
        prepare_edit(reg, EditRequest(passage=registry.cwd / "p.txt", device="cpu"), here=False)
    assert caught.value.ref == "HEAD" and isinstance(caught.value, LookupError) and isinstance(caught.value, UserError)
    with pytest.raises(LookupError) as caught:  # callers that know only the builtin catch it too
        starting_parent(reg, LearnRequest(edit=EditRequest(device="cpu")))
    assert isinstance(caught.value, NoHead) and caught.value.ref == "HEAD"
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained",
                        lambda *a, **k: pytest.fail("the model was loaded"))
    _one_line_error(registry("edit", "--passage", "p.txt", check=False), "HEAD points at nothing", "seal checkout main")
    assert _snapshot(registry) == before
