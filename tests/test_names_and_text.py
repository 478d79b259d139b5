"""Hostile names and text: refs that would hide each other, empty arguments, terminal control
characters, weak trust keys, a damaged blob in diff and a failed init's folder."""

from __future__ import annotations

import json
import os

import pytest

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _refused(proc, *words) -> None:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


@sqlite_only
@pytest.mark.parametrize("argv", [
    ("branch", ".hidden"), ("branch", "refs/heads/x"), ("tag", ".v1"), ("alias", "refs/x", "HEAD", "-m", "r"),
    ("branch", ""), ("tag", " "), ("--repo", "", "log"), ("show", "~"), ("show", "^2"), ("checkout", "-b", ".x"),
])
def test_bad_names_and_empty_arguments_are_refused(registry, argv):
    before = registry.json("log", "--all")
    refs = registry.json("branch")
    _refused(registry.run(*argv))
    assert registry.json("log", "--all") == before and registry.json("branch") == refs


@sqlite_only
def test_a_branch_and_a_tag_never_share_a_name(registry, reg, tiny_base):
    from seal.registry.store import refs as R

    registry("import", tiny_base["adapters"][0], "-m", "one")
    registry("tag", "v1")
    _refused(registry.run("branch", "v1"), "already a tag")
    _refused(registry.run("checkout", "-b", "v1"), "already a tag")
    registry("branch", "exp")
    _refused(registry.run("tag", "exp"), "already a branch")
    # One made behind seal's back (an old registry, a forged row) is ambiguous, never silently one of them.
    reg.move_ref(R.TAGS + "exp", new=reg.resolve("HEAD~1"), expected=None, reason="tag: forged")
    _refused(registry.run("show", "exp"), "both a branch and a tag")
    assert registry.json("show", "refs/tags/exp")["id"] == reg.resolve("HEAD~1")


@sqlite_only
@pytest.mark.parametrize("text", ["ok\x1b[2Jgone", "bidi \u202e txt", "bell\x07"])
def test_control_characters_never_reach_the_record(registry, tiny_base, text):
    before = registry.json("log", "--all")
    _refused(registry.run("import", tiny_base["adapters"][0], "-m", text), "control or bidirectional")
    _refused(registry.run("alias", "production", "HEAD", "-m", text), "control or bidirectional")
    assert registry.json("log", "--all") == before


@sqlite_only
def test_a_hostile_actor_is_refused(registry, tiny_base):
    from conftest import Seal

    before = registry.json("log", "--all")
    hostile = Seal(registry.cwd, {"SEAL_ACTOR": "eve\x1b]0;owned\x07"})
    _refused(hostile.run("import", tiny_base["adapters"][0]), "SEAL_ACTOR")
    assert registry.json("log", "--all") == before


@sqlite_only
@pytest.mark.parametrize("y", [0, 1, 2**255 - 20, 2**255 - 19])
def test_weak_keys_are_never_trusted(registry, y):
    from seal.registry.store.signing import format_trust_line

    weak = y.to_bytes(32, "little").hex()
    trust = registry.cwd / ".seal" / "allowed_signers"
    text = trust.read_text()
    _refused(registry.run("key", "trust", weak), "small order")
    assert trust.read_text() == text
    trust.write_text(text + format_trust_line(weak, "eve") + "\n")
    _refused(registry.run("verify"), "weak key")


@sqlite_only
def test_diff_refuses_a_damaged_blob(registry, tiny_base):
    registry("import", tiny_base["adapters"][0], "-m", "one")
    registry("import", tiny_base["adapters"][1], "-m", "two")
    digest = registry.json("show", "HEAD")["adapter"]["weights"]
    path = registry.cwd / ".seal" / "objects" / "sha256" / digest[7:9] / digest[9:]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the tensor data: the header still parses, the numbers would be wrong
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    _refused(registry.run("diff", "HEAD~1", "HEAD"), "seal verify")


@sqlite_only
def test_a_failed_init_leaves_no_folder_behind(registry, tmp_path, tiny_base):
    db = registry.cwd / ".seal" / "lineage.db"
    target = tmp_path / "new" / "deeper"
    proc = registry.run("init", str(target), "--base", tiny_base["base"], "--db", f"sqlite:///{db}")
    _refused(proc, "already holds a seal registry")
    assert not (tmp_path / "new").exists()


@sqlite_only
def test_an_alias_never_takes_a_branch_or_tag_name(registry, tiny_base):
    registry("import", tiny_base["adapters"][0], "-m", "one")
    registry("tag", "v1")
    before = registry.json("log", "--all")
    for name in ("main", "v1"):
        _refused(registry.run("alias", name, "HEAD", "-m", "why"), "already a")
    registry("alias", "production", "HEAD", "-m", "review passed")
    before = registry.json("log", "--all")
    _refused(registry.run("branch", "production"), "already an alias")
    _refused(registry.run("tag", "production"), "already an alias")
    assert registry.json("log", "--all") == before


@sqlite_only
@pytest.mark.parametrize("value", ["nan", "inf", "1e309", "abc", "true", "1\n[evil]\nx=1"])
def test_a_refused_policy_change_writes_nothing(registry, value):
    seal_dir = registry.cwd / ".seal"
    before = {p.name: p.read_bytes() for p in seal_dir.iterdir() if p.is_file()}
    _refused(registry.run("policy", "set", "kl_vs_base_max", value, "-m", "try"))
    assert {p.name: p.read_bytes() for p in seal_dir.iterdir() if p.is_file()} == before


@sqlite_only
def test_audit_never_overwrites_a_file_it_did_not_write(registry, tiny_base):
    registry("import", tiny_base["adapters"][0], "-m", "one")
    registry("checkout", "main")
    weights = registry.cwd / "adapter" / "adapter_model.safetensors"
    notes = registry.cwd / "notes.md"
    notes.write_text("# my notes\n")
    kept = weights.read_bytes()
    for target in (weights, notes):
        _refused(registry.run("audit", "--format", "json", "-o", target), "seal did not write it")
    assert weights.read_bytes() == kept and notes.read_text() == "# my notes\n"
    report = registry.cwd / "audit.json"
    registry("audit", "--format", "json", "-o", report)
    registry("audit", "--format", "json", "-o", report)  # its own earlier report is replaced
    assert json.loads(report.read_text())["schema"] == "seal.audit/1"


@sqlite_only
def test_an_empty_option_value_is_refused(registry):
    _refused(registry.run("--repo=", "log"), "--repo has an empty value")


@sqlite_only
@pytest.mark.parametrize("line", ['[objects]\nurl = "ftp://x"\n', '[database]\nurl = "mysql://x"\n'])
def test_a_config_url_seal_cannot_open_is_refused_on_read(registry, line):
    config = registry.cwd / ".seal" / "config.toml"
    text = config.read_text()
    section = line.split("\n")[0]
    config.write_text(text.replace(section + "\n", line, 1) if section in text else text + "\n" + line)
    _refused(registry.run("log"), "fix it by hand")
