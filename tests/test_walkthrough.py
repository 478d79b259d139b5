"""The scripted walkthrough of the foundation, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json

import torch

from adapters import adapter_logits


def test_walkthrough(registry, tiny_base, tmp_path):
    seal = registry
    a0, a1, a2 = tiny_base["adapters"]
    first = seal.json("import", a0, "-m", "first")
    second = seal.json("import", a1, "-m", "second")
    assert second["parent"] == first["id"]
    seal("branch", "exp", "HEAD~1")
    seal("checkout", "exp")
    side = seal.json("import", a2, "-m", "side")
    assert side["parent"] == first["id"] and side["ref"] == "exp"
    seal("checkout", "main")
    seal("tag", "v1", "HEAD~1")

    graph = seal("log", "--all", "--graph").stdout.splitlines()
    assert len([l for l in graph if "import" in l or "root" in l]) == 4
    assert any(l.startswith("|/") for l in graph), graph  # the two lines join at `first`
    items = seal.json("log")
    assert [i["message"] for i in items] == ["second", "first", items[2]["message"]]
    assert items[0]["refs"] == ["HEAD -> main"] and items[2]["kind"] == "root"
    assert set(items[0]) >= {"id", "parents", "kind", "status", "created_at", "message", "refs"}
    assert len(seal.json("log", "--all")) == 4

    # Checkout by HEAD~1, by a tag, by a 6-character prefix: each loads with PEFT and gives the
    # same logits as the adapter folder it came from.
    cases = [("HEAD~1", a0), ("v1", a0), (second["id"][:6], a1), (side["id"][:6], a2)]
    for rev, original in cases:
        out = tmp_path / f"out-{rev.replace('~', '_')}"
        seal("checkout", rev, "--to", out)
        assert torch.equal(adapter_logits(tiny_base["base"], out), adapter_logits(tiny_base["base"], original))
    assert not torch.equal(adapter_logits(tiny_base["base"], a0), adapter_logits(tiny_base["base"], a1))

    # A plain checkout moves HEAD (detached) and writes the working adapter folder.
    moved = seal.json("checkout", first["id"][:8])
    assert moved["detached"] and moved["id"] == first["id"]
    assert seal.json("show", "HEAD")["id"] == first["id"]
    assert (seal.cwd / "adapter" / "adapter_model.safetensors").is_file()

    shown = seal.json("show", "v1")
    assert shown["id"] == first["id"] and shown["adapter"]["weights"].startswith("sha256:")
    assert seal("verify").returncode == 0
    reasons = [e["reason"] for e in seal.json("reflog", "main")]
    assert reasons[-1] == "init" and "import: second" in reasons


def test_log_n_and_rev(registry, tiny_base):
    seal = registry
    for i, a in enumerate(tiny_base["adapters"]):
        seal("import", a, "-m", f"v{i}")
    assert [i["message"] for i in seal.json("log", "-n", "2")] == ["v2", "v1"]
    assert [i["message"] for i in seal.json("log", "HEAD~1", "-n", "1")] == ["v1"]
    assert seal.json("show", "HEAD^")["message"] == "v1"
    assert seal.json("show", "HEAD~1^1")["message"] == "v0"
    assert seal.json("show", "HEAD~3")["kind"] == "root"


def test_checkout_refuses_to_clobber(registry, tiny_base, tmp_path):
    seal = registry
    seal("import", tiny_base["adapters"][0])
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    r = seal("checkout", "HEAD", "--to", precious, expect=2)
    assert "seal did not write it" in r.stderr and (precious / "notes.txt").read_text() == "mine"
    out = tmp_path / "co"
    seal("checkout", "HEAD", "--to", out)
    (out / "adapter_config.json").write_text("{}")
    r = seal("checkout", "HEAD", "--to", out, expect=2)
    assert "local changes" in r.stderr
    seal("checkout", "HEAD", "--to", out, "--force")
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_checked_out_folders_load_anywhere(registry, tiny_base, tmp_path):
    """`checkout --to` names the base the way from_pretrained loads it offline, as `seal base --path` prints."""
    import json

    import torch
    from peft import AutoPeftModelForCausalLM

    seal = registry
    seal("import", tiny_base["adapters"][0])
    out = tmp_path / "anywhere"
    seal("checkout", "HEAD", "--to", out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == seal("base", "--path").stdout.strip()
    model = AutoPeftModelForCausalLM.from_pretrained(out)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.arange(1, 17).unsqueeze(0)).logits
    assert torch.equal(logits, adapter_logits(tiny_base["base"], tiny_base["adapters"][0]))
    assert seal.json("base")["name"] == seal.json("show", "main~1")["message"].removeprefix("base model ")
