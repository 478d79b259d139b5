"""`seal push` / `seal pull` against a local Hub server that the real huggingface_hub client talks to."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import threading
from contextlib import closing
from pathlib import Path

import pytest
import torch
import yaml

from adapters import adapter_logits, build_bare_llama
from conftest import Seal

try:
    from .hubfixtures import hf_api, local_hub  # noqa: F401
except ImportError:  # tests/ is not a package
    from hubfixtures import hf_api, local_hub  # noqa: F401

# huggingface_hub's own LFS PUT passes a file object as `data=`, which httpx2 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

REPO = "seal-test/adapter"


def make_registry(root: Path, name: str, hub, base: Path, like: Seal | None = None) -> Seal:
    """A registry at root/name; with ``like``, a copy of that fresh (SQLite) registry, signing key included,
    which saves an init (it loads the base to fingerprint it)."""
    seal = Seal(root / name, env={**hub.client_env, "SEAL_ACTOR": name})
    if like is None:
        (root / name).mkdir()
        seal("init", ".", "--base", base)
    else:
        shutil.copytree(like.cwd, root / name)
    return seal


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def state(seal: Seal) -> dict:
    """Everything a pull could change: every row of every table, and the object store's files."""
    objects = sorted(str(p.relative_to(seal.cwd)) for p in (seal.cwd / ".seal" / "objects").rglob("*"))
    with closing(sqlite3.connect(seal.cwd / ".seal" / "lineage.db")) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {t: sorted(map(repr, db.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    assert rows["versions"] and rows["reflog"]
    return {"rows": rows, "objects": objects}


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seal: error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def push_three(local_hub, tiny_base, tmp_path, fresh: bool) -> dict:
    """Registry `a` with three imported versions, pushed to REPO; and a fresh registry `b` on the same base
    (with ``fresh``, its own init and signing key; else a copy of `a` as it was fresh)."""
    a = make_registry(tmp_path, "a", local_hub, tiny_base["base"])
    b = make_registry(tmp_path, "b", local_hub, tiny_base["base"], like=None if fresh else a)
    ids = [a.json("import", adapter, "-m", f"v{i}")["id"] for i, adapter in enumerate(tiny_base["adapters"])]
    out = a.json("push", REPO)
    return {"a": a, "b": b, "ids": ids, "push": out}


@pytest.fixture
def pushed(local_hub, tiny_base, tmp_path):
    return push_three(local_hub, tiny_base, tmp_path, fresh=False)


@pytest.fixture
def pushed_fresh(local_hub, tiny_base, tmp_path):
    return push_three(local_hub, tiny_base, tmp_path, fresh=True)


def test_push_then_pull_into_a_fresh_registry(pushed_fresh, local_hub, hf_api, tiny_base, tmp_path):
    a, b, ids, out = pushed_fresh["a"], pushed_fresh["b"], pushed_fresh["ids"], pushed_fresh["push"]
    assert [p["id"] for p in out["pushed"]] == ids and not out["up_to_date"]
    assert out["commit"] == local_hub.head(REPO) == out["pushed"][-1]["commit"]
    refs = hf_api.list_repo_refs(REPO)
    assert {t.name: t.target_commit for t in refs.tags} == {p["tag"]: p["commit"] for p in out["pushed"]}
    assert {t.name for t in refs.tags} == {i[:12] for i in ids}
    titles = [c.title for c in hf_api.list_repo_commits(REPO)]
    assert titles[:3] == [f"seal {i[:12]}: v{n}" for n, i in reversed(list(enumerate(ids)))]
    assert sorted(hf_api.list_repo_files(REPO)) == [
        ".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors", "seal/lineage.json",
    ]
    weights = local_hub.read(REPO, "adapter_model.safetensors")
    assert weights == (tiny_base["adapters"][2] / "adapter_model.safetensors").read_bytes()
    meta = front_matter(local_hub.read(REPO, "README.md").decode())
    assert meta["base_model"] == "base" and meta["base_model_relation"] == "adapter"
    assert meta["library_name"] == "peft" and {"seal", "lora"} <= set(meta["tags"])
    card = local_hub.read(REPO, "README.md").decode()
    assert "```mermaid" in card and f"v{ids[1][:12]} --> v{ids[2][:12]}" in card
    lineage = json.loads(local_hub.read(REPO, "seal/lineage.json"))
    assert lineage["head"] == ids[2] and [v["id"] for v in lineage["versions"]][1:] == ids

    # Pushing again is a no-op.
    again = a.json("push", REPO)
    assert again["up_to_date"] and again["pushed"] == [] and local_hub.head(REPO) == out["commit"]
    assert "up to date" in a("push", REPO).stdout

    got = b.json("pull", REPO)
    assert got["imported"] == ids and got["head"] == ids[2] and got["ref"] == f"hub/{REPO}"
    assert [i["id"] for i in b.json("log", f"hub/{REPO}")] == [i["id"] for i in a.json("log")]
    assert b("verify").returncode == 0
    assert b.json("show", "main")["signer"] != a.json("show", "main")["signer"]  # b trusts a's key now
    shown_a, shown_b = a.json("show", ids[2]), b.json("show", ids[2])
    for key in ("kind", "status", "parents", "adapter", "message", "created_at", "signature", "signer"):
        assert shown_b[key] == shown_a[key]
    reflog = b.json("reflog", f"refs/remotes/hub/{REPO}")
    assert reflog[0]["reason"] == f"pull: {REPO}@{out['commit']}"
    # The head's adapter came from the head commit, its ancestors' from their tagged commits.
    for rev, original in ((f"hub/{REPO}", tiny_base["adapters"][2]), (f"hub/{REPO}~2", tiny_base["adapters"][0])):
        dest = tmp_path / f"out-{rev[-1]}"
        b("checkout", rev, "--to", dest)
        assert torch.equal(adapter_logits(tiny_base["base"], dest), adapter_logits(tiny_base["base"], original))
    before = state(b)
    assert b.json("pull", REPO)["up_to_date"]
    assert state(b) == before

    # --create-pr opens a Hub pull request and leaves the branch where it was.
    v3 = a.json("import", tiny_base["adapters"][0], "-m", "v3")["id"]
    pr = a.json("push", REPO, "--create-pr")
    assert pr["pr_url"] and [p["id"] for p in pr["pushed"]] == [v3] and local_hub.head(REPO) == out["commit"]
    assert json.loads(local_hub.read(REPO, "seal/lineage.json", revision="refs/pr/1"))["head"] == v3


def test_tampered_downloads_and_forged_manifests_import_nothing(pushed, local_hub):
    b, ids = pushed["b"], pushed["ids"]
    before = state(b)
    weights, lineage = "adapter_model.safetensors", "seal/lineage.json"
    head_weights = local_hub.read(REPO, weights)
    old_weights = local_hub.read(REPO, weights, revision=ids[0][:12])
    doc = json.loads(local_hub.read(REPO, lineage))
    doc["versions"][2]["manifest"]["message"] = "totally harmless"  # a forged manifest: message edited, id kept
    forged = json.dumps(doc, indent=1, sort_keys=True).encode()
    cases = [
        # (path, revision, bad bytes, good bytes, what the refusal names)
        (weights, "main", head_weights[:-1] + bytes([head_weights[-1] ^ 1]), head_weights,
         f"{weights} does not match the head version's digest"),
        # an ancestor's adapter comes from the commit tagged with its short id
        (weights, ids[0][:12], old_weights[:-1] + bytes([old_weights[-1] ^ 1]), old_weights,
         f"{weights} of version {ids[0][:12]} (tag {ids[0][:12]}) does not match its digest"),
        (lineage, "main", forged, local_hub.read(REPO, lineage),
         f"the manifest of version {ids[1][:12]} does not hash to its id"),
    ]
    for path, revision, bad, good, needle in cases:
        local_hub.tamper(REPO, path, bad, revision=revision)
        proc = b("pull", REPO, check=False)
        assert_one_line_error(proc, needle, "nothing was imported")
        assert proc.returncode == 2
        assert state(b) == before, needle
        assert not list((b.cwd / ".seal" / "tmp").iterdir())
        local_hub.tamper(REPO, path, good, revision=revision)
    assert b.json("pull", REPO)["imported"] == ids  # the same repo, untampered, pulls fine


def test_pickles_unexpected_files_other_bases_and_bad_names_are_refused(
    pushed, local_hub, hf_api, tiny_base, tmp_path
):
    from huggingface_hub import CommitOperationAdd

    a, b = pushed["a"], pushed["b"]
    before = state(b)
    hf_api.create_commit(REPO, [CommitOperationAdd("train.py", b"print('hi')\n")], commit_message="x", create_pr=True)
    assert_one_line_error(b("pull", f"{REPO}@refs/pr/1", check=False), "files a seal push does not write (train.py)")
    hf_api.create_commit(REPO, [CommitOperationAdd("adapter_model.bin", b"\x80\x04evil pickle\x00")],
                         commit_message="add pickle")
    assert_one_line_error(b("pull", REPO, check=False), "pickle files (adapter_model.bin)")
    assert state(b) == before

    # Names and places that do not exist, and a Hub that cannot be reached.
    assert_one_line_error(a("push", "not a repo", check=False), "not a valid Hub repo id")
    assert_one_line_error(b("pull", "seal-test/missing", check=False), "was not found on the Hub")
    assert_one_line_error(b("pull", f"{REPO}@nope", check=False), "revision 'nope' was not found")
    offline = Seal(b.cwd, env={**b.env, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert_one_line_error(offline("pull", REPO, check=False), "could not reach the Hub")
    assert state(b) == before

    # The lineage as pushed (the tag of the head version), into a registry on another base.
    other = make_registry(tmp_path, "other", local_hub, build_bare_llama(tmp_path / "base2", seed=1))
    proc = other("pull", f"{REPO}@{pushed['ids'][2][:12]}", check=False)
    assert_one_line_error(proc, "pulled lineage is on base base", "this registry is on base2")


def test_concurrent_pushes_exactly_one_wins(local_hub, hf_api, tiny_base, tmp_path):
    from seal.registry.errors import RefConflict
    from seal.registry.hub import execute_push, plan_push
    from seal.registry.repository import Repository

    a = make_registry(tmp_path, "a", local_hub, tiny_base["base"])
    b = make_registry(tmp_path, "b", local_hub, tiny_base["base"], like=a)
    a_id = a.json("import", tiny_base["adapters"][0], "-m", "from a")["id"]
    b_id = b.json("import", tiny_base["adapters"][1], "-m", "from b")["id"]

    # In-process: both read the same head, then both commit on it; the Hub takes only the first.
    repo_a, repo_b = Repository.find(a.cwd), Repository.find(b.cwd)
    plan_a, plan_b = plan_push(repo_a, "race/one"), plan_push(repo_b, "race/one")
    assert plan_a.head_commit == plan_b.head_commit
    execute_push(repo_a, plan_a)
    with pytest.raises(RefConflict, match=r"the Hub branch moved since you read it; run `seal pull race/one`"):
        execute_push(repo_b, plan_b)
    assert json.loads(local_hub.read("race/one", "seal/lineage.json"))["head"] == a_id

    # Two `seal push` processes at once: one wins, the other fails cleanly and says what to do.
    barrier = threading.Barrier(2)
    procs: dict[str, subprocess.CompletedProcess] = {}

    def run(name: str, seal: Seal) -> None:
        barrier.wait()
        procs[name] = seal("push", "race/two", check=False)

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(p.returncode for p in procs.values())
    assert codes == [0, 1], {n: (p.returncode, p.stderr) for n, p in procs.items()}
    winner = next(n for n, p in procs.items() if p.returncode == 0)
    loser = procs["b" if winner == "a" else "a"]
    assert_one_line_error(loser, "run `seal pull race/two`")
    head = json.loads(local_hub.read("race/two", "seal/lineage.json"))["head"]
    assert head == {"a": a_id, "b": b_id}[winner]
    assert len(hf_api.list_repo_refs("race/two").tags) == 1


def test_model_card_carries_scores_and_gates():
    from seal.registry.hub import model_card
    from seal.registry.objects import build_manifest, version_id

    m = build_manifest(
        base="b" * 64, parents=["a" * 64], kind="edit", status="accepted",
        adapter={"weights": "sha256:" + "c" * 64, "config": {"r": 4}},
        scores=[{"suite": "qa", "metric": "accuracy", "against": None, "value": 0.75, "n": 20}],
        audit=[{"check": "drift_kl", "value": 0.01, "threshold": 0.1, "passed": True, "detail": ""},
               {"check": "refusal", "value": 0.5, "threshold": 0.9, "passed": False, "detail": "xstest"}],
        message="learn | things",
    )
    vid = version_id(m)
    card = model_card(repo_id="me/a", base={"name": "org/base"}, vid=vid, manifest=m,
                      lineage=[{"id": vid, "manifest": m}])
    meta = front_matter(card)
    assert meta["base_model"] == "org/base" and meta["base_model_relation"] == "adapter"
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0]["type"] == "accuracy" and result["metrics"][0]["value"] == 0.75
    assert "| qa | accuracy |  | 0.7500 | 20 |" in card
    assert "2 gates, 1 of 2 gates FAIL" in card and "| refusal | 0.5000 | 0.9 | FAIL | xstest |" in card


@pytest.mark.parametrize("status, kind, needle", [
    (401, "UserError", "set HF_TOKEN to a token with write access"),
    (403, "UserError", "set HF_TOKEN"),
    (412, "RefConflict", "the Hub branch moved since you read it; run `seal pull me/a` and push again"),
    (503, "SealError", "try again later"),
])
def test_hub_http_errors_become_one_line_seal_errors(status, kind, needle):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    from seal.registry import errors
    from seal.registry.hub import hub_errors

    response = httpx2.Response(status, request=httpx2.Request("POST", "https://hub.invalid/api/x"))
    with pytest.raises(errors.SealError) as caught:
        with hub_errors("me/a"):
            raise HfHubHTTPError(f"{status} Client Error", response=response)
    assert type(caught.value).__name__ == kind and needle in str(caught.value)
    assert "\n" not in str(caught.value)
