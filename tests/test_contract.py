"""The exit-code contract, as subprocesses: every bad invocation exits 2 with one line, no
traceback, and leaves the registry byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from conftest import Seal, make_registry


def tree_state(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the sha256 of its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def contract_repo(tmp_path_factory, tiny_base, tiny_base_record):
    root = tmp_path_factory.mktemp("contract")
    make_registry(root, tiny_base_record).close()
    seal = Seal(root, {"SEAL_ACTOR": "tester"})
    seal("import", tiny_base["adapters"][0], "-m", "first")
    seal("tag", "v1")
    files = root / "files"
    files.mkdir()
    (files / "bad.jsonl").write_text('{"prompt": "x"}\nnot json\n')
    (files / "passage.txt").write_text("# Title\nSome facts about the Zorblat river.\n")
    (files / "empty.txt").write_text("")
    (files / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (files / "qa.json").write_text(json.dumps({"title": "t", "context": "c", "questions": [{"question": 1}]}))
    broken = root / "broken-adapter"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": NaN}')
    (broken / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return seal


BAD = [
    ["--bogus"],
    ["nosuchcmd"],
    [],
    ["log", "-n", "abc"],
    ["log", "--no-such-option"],
    ["log", "-n", "-3"],
    ["show", "nosuchbranch"],
    ["show", "HEAD~99"],
    ["show", "HEAD^3"],
    ["show", "ab"],
    ["show", "HEAD~x"],
    ["show", "\x1b[31mred"],
    ["checkout", "nosuch"],
    ["checkout", "HEAD", "--to", "."],
    ["checkout", "HEAD", "--to", ".seal"],
    ["checkout", "HEAD", "--to", ".seal/objects"],
    ["checkout", "HEAD", "--to", "files"],
    ["checkout", "HEAD", "--to", ".."],
    ["checkout", "-b", "x", "HEAD", "--to", "out"],
    ["checkout", "-b", "bad name"],
    ["checkout", "-b", "cafe12"],
    ["branch", "main"],
    ["branch", "deadbeef"],
    ["branch", "-d", "nosuch"],
    ["branch", "-d", "main"],
    ["tag", "v1"],
    ["tag", "bad..name"],
    ["alias", "prod", "HEAD"],
    ["import", "files/missing"],
    ["import", "files"],
    ["import", "broken-adapter"],
    ["import", "files/passage.txt"],
    ["diff", "HEAD", "nosuch"],
    ["revert", "HEAD", "--to", "HEAD"],
    ["audit", "--format", "pdf"],
    ["audit", "-o", "no/such/dir/a.md"],
    ["gc", "--grace", "soon"],
    ["policy", "set", "no_such_gate", "1", "-m", "x"],
    ["policy", "set", "kl_vs_base_max", "inf", "-m", "x"],
    ["policy", "set", "kl_vs_base_max", "nan", "-m", "x"],
    ["policy", "set", "kl_vs_base_max", "1.0"],
    ["key", "trust", "xyz"],
    ["edit", "--passage", "files/passage.txt", "--lr", "nan"],
    ["edit", "--passage", "files/passage.txt", "--lr", "inf"],
    ["edit", "--passage", "files/passage.txt", "--temperature", "-1"],
    ["edit", "--passage", "files/passage.txt", "--top-p", "5"],
    ["edit", "--passage", "files/passage.txt", "--max-tokens", "0"],
    ["edit", "--passage", "files/passage.txt", "--targets", "no_such_module"],
    ["edit", "--passage", "files/passage.txt", "--candidates", "0"],
    ["edit", "--passage", "files/passage.txt", "--epochs", "0"],
    ["edit", "--passage", "files/passage.txt", "--style", "poem"],
    ["edit", "--passage", "files/passage.txt", "--device", "tpu"],
    ["edit", "--passage", "files/empty.txt"],
    ["edit", "--passage", "files/latin1.txt"],
    ["edit", "--passage", "files/qa.json"],
    ["edit", "--examples", "files/bad.jsonl"],
    ["edit"],
    ["merge", "HEAD"],
    ["merge", "HEAD", "v1", "--method", "magic"],
    ["merge", "HEAD", "v1", "--weights", "1,2,3"],
    ["consolidate", "nonsense"],
    ["pull", "not a repo id"],
    ["push", "bad//id"],
    ["db", "upgrade", "--bogus"],
]


def test_bad_invocations_exit_2_and_change_nothing(contract_repo):
    seal = contract_repo.as_process()
    before = tree_state(seal.cwd)
    failures = []
    for args in BAD:
        proc = seal.run(*args)
        err = proc.stderr.strip()
        if proc.returncode != 2 or "Traceback" in proc.stderr or len(err.splitlines()) != 1 or proc.stdout.strip():
            failures.append((args, proc.returncode, proc.stdout[-300:], proc.stderr[-600:]))
    assert not failures, "\n".join(map(repr, failures))
    assert tree_state(seal.cwd) == before
    assert len(BAD) >= 30


def test_usage_basics(contract_repo):
    seal = contract_repo.as_process()
    version = seal("--version")
    assert version.stdout.startswith("seal ") and version.returncode == 0
    helped = seal("log", "--help")
    assert "Example" in helped.stdout
    outside = Seal(seal.cwd.parent, process=True)
    proc = outside.run("log")
    assert proc.returncode == 2 and "not inside a seal registry" in proc.stderr


def test_read_commands_import_no_model_library(contract_repo):
    seal = contract_repo.as_process()
    heavy = ("torch", "transformers", "peft", "mlflow", "sqlalchemy", "alembic")
    for args in (["log", "-n", "5"], ["show", "HEAD"], ["verify"], ["status"], ["reflog"]):
        env = {**seal.env, "PYTHONPROFILEIMPORTTIME": "1"}
        proc = Seal(seal.cwd, env, process=True).run(*args)
        assert proc.returncode == 0, proc.stderr
        loaded = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
        assert not loaded & set(heavy), (args, loaded & set(heavy))


def test_checkout_to_never_destroys(registry, tiny_base, tmp_path):
    seal = registry
    seal("import", tiny_base["adapters"][0])
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("my notes")
    (seal.cwd / "precious.txt").write_text("keep me")
    before = tree_state(seal.cwd)
    for target in (seal.cwd, seal.cwd / ".seal", seal.cwd / ".seal" / "objects", user, tmp_path.parent):
        for force in ([], ["--force"]):
            proc = seal.run("checkout", "HEAD", "--to", target, *force)
            assert proc.returncode == 2, (target, proc.stdout, proc.stderr)
    assert tree_state(seal.cwd) == before
    assert (user / "notes.txt").read_text() == "my notes"


def test_checkout_force_replaces_only_seal_files(registry, tiny_base, tmp_path):
    seal = registry
    first = seal.json("import", tiny_base["adapters"][0])["id"]
    second = seal.json("import", tiny_base["adapters"][1])["id"]
    out = tmp_path / "out"
    seal("checkout", first, "--to", out)
    (out / "mine.txt").write_text("user file")
    (out / "adapter_config.json").write_text("{}")  # a local change to a file seal wrote
    refused = seal.run("checkout", second, "--to", out)
    assert refused.returncode == 2 and "local changes" in refused.stderr
    seal("checkout", second, "--to", out, "--force")
    assert (out / "mine.txt").read_text() == "user file"
    assert json.loads((out / ".seal-checkout.json").read_text())["version"] == second


def test_status_reports_each_state(registry, tiny_base):
    seal = registry
    seal("import", tiny_base["adapters"][0])
    assert seal.json("status")["state"] == "missing"
    seal("checkout", "main")
    assert seal.json("status")["state"] == "clean"
    seal("import", tiny_base["adapters"][1])
    assert seal.json("status")["state"] == "stale"
    seal("checkout", "main")
    (seal.cwd / "adapter" / "adapter_config.json").write_text("{}")
    assert seal.json("status")["state"] == "modified"


def test_failed_checkout_moves_nothing(registry, tiny_base, reg):
    seal = registry
    vid = seal.json("import", tiny_base["adapters"][0])["id"]
    seal("checkout", "-b", "side", "HEAD~1")
    blob = reg.manifest(vid)["adapter"]["weights"]
    path = reg.store.path_of(blob)
    os.chmod(path, 0o600)
    path.unlink()
    head_before = reg.read_ref("HEAD")
    reflog_before = len(reg.reflog())
    proc = seal.run("checkout", "main")
    assert proc.returncode == 2 and "missing" in proc.stderr
    assert reg.read_ref("HEAD") == head_before and len(reg.reflog()) == reflog_before


def test_missing_signing_key_is_named_and_never_replaced(registry, reg, tiny_base):
    key = registry.cwd / ".seal" / "keys" / "signing.key"
    key.unlink()
    proc = registry.run("import", tiny_base["adapters"][0])
    assert proc.returncode == 2 and "signing key" in proc.stderr and "seal key new" in proc.stderr
    assert not key.exists()
    registry("key", "new")
    registry("import", tiny_base["adapters"][0])
    assert registry.run("verify").returncode == 0


def test_corrupt_config_and_policy_name_the_key(registry, tiny_base):
    config = registry.cwd / ".seal" / "config.toml"
    good = config.read_text()
    config.write_text(good + "\n[database]\nurl = 5\n")
    proc = registry.run("log")
    assert proc.returncode == 2 and "config.toml" in proc.stderr
    config.write_text(good + "\n[bogus]\nx = 'y'\n")
    assert "unknown section [bogus]" in registry.run("log").stderr
    config.write_text(good)
    policy = registry.cwd / ".seal" / "policy.toml"
    policy.write_text(policy.read_text().replace("kl_vs_base_max = 2.0", "kl_vs_base_max = inf"))
    proc = registry.run("policy", "show")
    assert proc.returncode == 2 and "kl_vs_base_max" in proc.stderr


def _small_filesystem(path: Path, size: str = "2m") -> bool:
    import subprocess

    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_disk_is_one_line_and_records_nothing(tmp_path, tiny_base, tiny_base_record):
    disk = tmp_path / "disk"
    if not _small_filesystem(disk):
        pytest.skip("cannot mount a small tmpfs here (needs root); the full-disk path is not exercised")
    try:
        make_registry(disk, tiny_base_record).close()
        seal = Seal(disk, {"SEAL_ACTOR": "tester"}, process=True)  # no file of the disk stays open in this process
        before = seal.json("log", "--all")
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        proc = seal.run("import", tiny_base["adapters"][0], "-m", "no room")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        # Reads still work on the full disk, and write nothing (no -wal/-shm index beside the database).
        files = tree_state(disk / ".seal")
        assert seal.json("log", "--all") == before
        assert seal.run("verify").returncode == 0
        assert tree_state(disk / ".seal") == files
        filler.unlink()
        assert seal.json("log", "--all") == before
        assert seal.run("verify").returncode == 0
    finally:
        import subprocess

        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_read_only_media_reads_and_refuses_writes_in_one_line(tmp_path, tiny_base, tiny_base_record):
    import subprocess

    disk = tmp_path / "ro"
    if not _small_filesystem(disk, "20m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the read-only path is not exercised")
    try:
        make_registry(disk, tiny_base_record).close()
        seal = Seal(disk, {"SEAL_ACTOR": "tester"}, process=True)
        seal("import", tiny_base["adapters"][0], "-m", "one")
        before = seal.json("log", "--all")
        assert subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode == 0
        assert seal.json("log", "--all") == before
        assert seal.run("verify").returncode == 0
        for argv in (("import", tiny_base["adapters"][0], "-m", "x"), ("tag", "v1"), ("checkout", "-b", "exp")):
            proc = seal.run(*argv)
            assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (argv, proc.stderr)
            assert "Traceback" not in proc.stderr
        # Exporting a version writes only the target folder: no lock file inside the read-only .seal.
        out = tmp_path / "exported"
        proc = seal.run("checkout", "HEAD", "--to", out)
        assert proc.returncode == 0, proc.stderr
        assert (out / ".seal-checkout.json").is_file()
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# --- bad bases: one line and exit 2 at `init`, and again before `edit` loads the model -----------

def _rewrite_header(folder: Path, change) -> None:
    """Edit the JSON header of folder/model.safetensors in place (data bytes unchanged)."""
    path = folder / "model.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    change(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


def _tiny_mamba(folder: Path) -> Path:
    """A real causal LM (Mamba) whose layers PEFT refuses to put LoRA on."""
    import torch
    from transformers import MambaConfig, MambaForCausalLM

    from adapters import word_tokenizer

    torch.manual_seed(0)
    MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=1,
                                 expand=2, conv_kernel=2)).save_pretrained(folder)
    word_tokenizer(64).save_pretrained(folder)
    return folder


def _bad_bases(root: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Each bad base, and a word its one-line refusal must hold."""
    import shutil

    def copy(name: str) -> Path:
        shutil.copytree(good, root / name)
        return root / name

    out = {}
    root.mkdir(parents=True, exist_ok=True)
    (root / "truncated.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 10)
    out["truncated GGUF"] = (root / "truncated.gguf", "truncated GGUF")
    (root / "foreign.gguf").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    out["foreign GGUF"] = (root / "foreign.gguf", "not a GGUF file")
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(root / "rwkv.gguf"), arch="rwkv6")  # a real GGUF transformers cannot read
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out["GGUF of an architecture transformers cannot de-quantize"] = (root / "rwkv.gguf", "cannot de-quantize")
    no_tok = copy("no-tokenizer")
    for f in no_tok.iterdir():
        if "token" in f.name:
            f.unlink()
    out["no tokenizer"] = (no_tok, "tokenizer")
    bad_config = copy("bad-config")
    (bad_config / "config.json").write_text('{"model_type": "no-such-architecture"}')
    out["config transformers cannot read"] = (bad_config, "config.json")
    not_lm = copy("not-a-causal-lm")
    (not_lm / "config.json").write_text('{"model_type": "vit", "hidden_size": 8, "num_hidden_layers": 1, '
                                        '"num_attention_heads": 2, "intermediate_size": 8}')
    out["config of a model that is not a causal LM"] = (not_lm, "not a causal language model")
    offsets = copy("header-offsets")

    def stretch(header):
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"][1] += 1 << 30
    _rewrite_header(offsets, stretch)
    out["safetensors header with lying offsets"] = (offsets, "model.safetensors")
    shapes = copy("header-shapes")

    def transpose(header):
        name = next(k for k, v in header.items() if k != "__metadata__" and "q_proj" in k)
        header[name]["shape"] = header[name]["shape"][::-1] if header[name]["shape"][0] != header[name]["shape"][1] \
            else [header[name]["shape"][0] // 2, header[name]["shape"][1] * 2]
    _rewrite_header(shapes, transpose)
    out["safetensors header with the wrong shape"] = (shapes, "implies")
    out["architecture PEFT cannot target"] = (_tiny_mamba(root / "mamba"), "PEFT")
    return out


def test_bad_bases_are_refused_at_init_in_one_line(tmp_path, tiny_base):
    seal = Seal(tmp_path, {"SEAL_ACTOR": "tester", "SEAL_CACHE": str(tmp_path / "cache")})
    for what, (spec, needle) in _bad_bases(tmp_path / "bases", tiny_base["base"]).items():
        target = tmp_path / "reg" / what.replace(" ", "-")
        proc = seal.run("init", target, "--base", spec)
        assert proc.returncode == 2, (what, proc.returncode, proc.stderr)
        err = proc.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and needle in err, (what, err)
        assert not (target / ".seal").exists(), what


def test_a_base_broken_after_init_is_refused_before_edit_loads_it(tmp_path, tiny_chat_base, monkeypatch):
    """The tokenizer or the weights go bad after `init`: `edit` says so in one line, writes nothing."""
    import shutil

    from seal.editor.base import base_record_for as describe_base
    from seal.editor import base as base_mod

    monkeypatch.setenv("SEAL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "base"
    shutil.copytree(tiny_chat_base, folder)
    make_registry(tmp_path / "reg", describe_base(str(folder))).close()
    seal = Seal(tmp_path / "reg", {"SEAL_ACTOR": "tester", "SEAL_CACHE": str(tmp_path / "cache")})
    (seal.cwd / "p.txt").write_text("# Zorblat\nThe Zorblat river flows into the northern sea.\n")
    before = tree_state(seal.cwd / ".seal")
    loads = []
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained",
                        lambda *a, **k: loads.append(a) or pytest.fail("the model was loaded"))
    (folder / "tokenizer.json").write_text("{not a tokenizer")
    proc = seal.run("edit", "--passage", "p.txt", "-k", "1")
    assert proc.returncode == 2 and "tokenizer" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert "Traceback" not in proc.stderr and not loads
    assert tree_state(seal.cwd / ".seal") == before
    assert base_mod._CHECK_FILE  # the check's record is kept per base in the cache, never in .seal
