"""A user's mistake: one line on stderr, exit 2, no traceback, nothing written."""

from __future__ import annotations

import shutil

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
    from seal.registry.objects import build_manifest

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
