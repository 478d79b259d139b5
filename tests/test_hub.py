"""`seal push` / `seal pull` against a local Hub server that the real huggingface_hub client talks to.

Registries are built in-process (``make_registry``) and the CLI runs in-process; real processes
only where the test is about processes (concurrent pulls, kill -9, quiet progress bars).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from contextlib import closing
from pathlib import Path
from unittest import mock

import pytest
import yaml

from conftest import SEAL, Seal, make_registry

try:
    from .hubfixtures import hf_api, local_hub  # noqa: F401
except ImportError:  # tests/ is not a package
    from hubfixtures import hf_api, local_hub  # noqa: F401

# huggingface_hub's own LFS PUT passes a file object as `data=`, which httpx2 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

REPO = "seal-test/adapter"


# --- building registries and lineages -----------------------------------------------------------

def new_registry(root: Path, name: str, record: dict, db_url: str | None = None) -> Seal:
    make_registry(root / name, record, db_url).close()
    env = {"SEAL_ACTOR": name, **({"SEAL_DATABASE_URL": db_url} if db_url else {})}
    return Seal(root / name, env)


def registry_of(seal: Seal):
    from seal.registry.repo import Registry

    url = seal.env.get("SEAL_DATABASE_URL")
    with mock.patch.dict(os.environ, {"SEAL_DATABASE_URL": url} if url else {}):
        reg = Registry.open(seal.cwd)
        reg.db  # bind the database URL now
    return reg


def signer_of(seal: Seal) -> str:
    return registry_of(seal).signer.id


def record_edit(seal: Seal, adapters: list[Path], *, message: str, accept: int | None = 0) -> list[str]:
    """What `seal edit` records, without a model: one candidate per adapter (the ``accept``-th accepted,
    the others rejected attempts), with trigger, self-edit and eval blobs, scores, gates and the policy."""
    from seal.registry import vocabulary as V
    from seal.registry.adapters import read_adapter_folder
    from seal.registry.policy import read_policy, record_policy
    from seal.registry.store.objects import build_manifest

    reg = registry_of(seal)
    ref, head = reg.head()
    shapes = (reg.base().get("info") or {}).get("shapes")
    policy = record_policy(reg, read_policy(reg))
    trigger = reg.store.put(json.dumps({"title": "Normandy", "passage": f"Normandy is in France. {message}"}).encode())
    eval_set = reg.store.put(json.dumps([{"question": "Where is Normandy?", "answer": "France"}]).encode())
    anchors = reg.store.put(b'{"anchors": ["2 + 2 = 4"]}')
    manifests = []
    for i, folder in enumerate(adapters):
        adapter = read_adapter_folder(folder, base_shapes=shapes)
        ok = i == accept
        scores = [V.EFFICACY_F1.row(0.3 + i / 100, 5), V.EFFICACY_F1.vs("parent").row(0.1, 5),
                  V.RETENTION.row(0.6, 40), V.RETENTION.vs("parent").row(0.55, 40), V.RETENTION.vs("base").row(0.5, 40),
                  V.REFUSAL.row(0.08 if ok else 0.0, 25), V.REFUSAL.vs("base").row(0.12, 25),
                  V.DRIFT_KL.vs("base").row(0.02, 16)]
        audit = [{"check": "refusal", "value": 0.04 if ok else 0.12, "threshold": 0.05, "passed": ok, "detail": "xstest"}]
        manifests.append(build_manifest(
            base=reg.base_id(), parents=[head], kind="edit", status="accepted" if ok else "rejected",
            adapter={"weights": reg.store.put_file(adapter.weights), "config": adapter.config, "format": "peft-lora"},
            trigger=trigger, self_edit=reg.store.put(f"self-edit {i}: {message}".encode()), scores=scores,
            audit=audit, policy=policy, author=seal.env["SEAL_ACTOR"], message=message,
            extra={"eval": eval_set, "probes": {"anchors": anchors}}))
    ids = reg.record_many(manifests)
    if accept is not None:
        reg.move_ref(ref, new=ids[accept], expected=head, reason="edit: accepted")
    reg.close()
    return ids


def loud_bars(env: dict) -> dict:
    """An environment where huggingface_hub would draw its progress bars even into a pipe
    (``TQDM_POSITION=-1``), unless seal quiets them."""
    return {**{k: v for k, v in env.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}, "TQDM_POSITION": "-1"}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def state(seal: Seal) -> dict:
    """Everything a pull could change: every row of every table, the object store and the trust file."""
    objects = sorted(str(p.relative_to(seal.cwd)) for p in (seal.cwd / ".seal" / "objects").rglob("*"))
    with closing(sqlite3.connect(seal.cwd / ".seal" / "lineage.db")) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {t: sorted(map(repr, db.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    trust = (seal.cwd / ".seal" / "allowed_signers").read_text()
    return {"rows": rows, "objects": objects, "trust": trust}


def assert_one_line_error(proc, *needles, code: int | None = None):
    assert proc.returncode != 0, proc.stdout
    if code is not None:
        assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seal: error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def hub_doc(local_hub, revision: str = "main") -> dict:
    return json.loads(local_hub.read(REPO, "seal/lineage.json", revision=revision))


@pytest.fixture
def published(local_hub, tiny_base, tiny_base_record, tmp_path) -> dict:
    """Publisher `a`: import v0 (tagged v1), then an edit with one accepted and one rejected candidate
    (alias production on the accepted one), pushed to REPO. Puller `b`: a fresh registry, its own key."""
    a = new_registry(tmp_path, "a", tiny_base_record)
    b = new_registry(tmp_path, "b", tiny_base_record)
    v0 = a.json("import", tiny_base["adapters"][0], "-m", "v0")["id"]
    a("tag", "v1", v0)
    a("policy", "set", "js_vs_parent_max", "0.3", "-m", "measured 0.12-0.19 per edit")  # unlike b's default 0.2
    edit, attempt = record_edit(a, tiny_base["adapters"][1:3], message="learn Normandy")
    a("alias", "production", edit, "-m", "ship it")
    push = a.run("push", REPO, "--json")
    assert push.returncode == 0, push.stderr
    return {"a": a, "b": b, "v0": v0, "edit": edit, "attempt": attempt, "push": push,
            "out": json.loads(push.stdout), "key": signer_of(a)}


# --- push ---------------------------------------------------------------------------------------

def test_push_is_private_and_carries_tags_attempts_policy_and_data(published, local_hub, hf_api, tmp_path):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    a, out, v0, edit, attempt = published["a"], published["out"], published["v0"], published["edit"], published["attempt"]
    assert out["private"] and hf_api.model_info(REPO).private
    with pytest.raises(RepositoryNotFoundError):  # a stranger (no token) cannot see it
        HfApi(endpoint=local_hub.endpoint, token=False).model_info(REPO)
    stranger = Seal(published["b"].cwd)
    stranger.env = {k: v for k, v in published["b"].env.items() if k != "HF_TOKEN"}
    assert_one_line_error(stranger.run("pull", REPO), "not found on the Hub, or your token cannot see it", code=2)
    assert [p["id"] for p in out["pushed"]] == [v0, edit]
    tags = {t.name: t.target_commit for t in hf_api.list_repo_refs(REPO).tags}
    commits = {p["id"]: p["commit"] for p in out["pushed"]}
    assert tags == {v0[:12]: commits[v0], edit[:12]: commits[edit], "v1": commits[v0],
                    "alias-production": commits[edit]}
    doc = hub_doc(local_hub)
    assert [v["id"] for v in doc["versions"]][1:] == [v0, edit, attempt]  # the rejected attempt travels
    files = set(hf_api.list_repo_files(REPO))
    manifests = {v["id"]: v["manifest"] for v in doc["versions"]}
    for digest in doc["blobs"]:
        assert f"seal/blobs/{digest[7:]}" in files
    policy = manifests[edit]["policy"]
    assert local_hub.read(REPO, f"seal/blobs/{policy[7:]}") == (a.cwd / ".seal" / "policy.toml").read_bytes()
    # The push said which data it uploads (on stderr, before uploading), and --json lists it.
    roles = {u["role"] for u in out["uploaded"]}
    assert {"trigger", "self_edit", "eval", "weights", "policy"} <= roles
    assert "uploading 4 data blob(s) to the private repo" in published["push"].stderr
    for role in ("trigger", "self_edit", "eval"):
        assert role in published["push"].stderr
    # Pushing again is a no-op; a new tag or a moved alias alone is pushed as Hub tags, without commits.
    assert a.json("push", REPO)["up_to_date"]
    a("tag", "stable", v0)
    a("alias", "production", v0, "-m", "roll back")
    again = a.json("push", REPO)
    assert again["pushed"] == [] and again["tags"] == {"stable": v0[:12], "alias-production": v0[:12]}
    tags = {t.name: t.target_commit for t in hf_api.list_repo_refs(REPO).tags}
    assert tags["stable"] == tags["alias-production"] == commits[v0]
    # A public repo is refused without --public; --public publishes.
    hf_api.create_repo("seal-test/open", private=False)
    assert_one_line_error(a.run("push", "seal-test/open"), "is public on the Hub; pass --public", code=2)
    assert a.json("push", REPO, "--public")["made_public"] and not hf_api.model_info(REPO).private


def test_model_card_holds_only_own_results_with_real_datasets_and_a_license(published, local_hub):
    edit = published["edit"]
    card = local_hub.read(REPO, "README.md").decode()
    meta = front_matter(card)
    assert meta["license"] == "other" and meta["library_name"] == "peft"  # a folder base: no Hub id, licence unknown
    assert "base_model" not in meta
    results = meta["model-index"][0]["results"]
    got = {(r["dataset"]["name"], m["type"]): m["value"] for r in results for m in r["metrics"]}
    assert got == {(f"eval set {hub_doc(local_hub)['versions'][-2]['manifest']['eval'][7:19]}", "f1"): 0.3,
                   ("retention anchors " + hub_doc(local_hub)["versions"][-2]["manifest"]["probes"]["anchors"][7:19],
                    "accuracy"): 0.6,
                   ("XSTest", "refusal_rate_unsafe"): 0.08}  # never the parent's 0.1 / 0.55 or the base's 0.12
    xstest = next(r for r in results if r["dataset"]["name"] == "XSTest")
    assert xstest["dataset"]["type"] == "Paul/XSTest"
    assert "| retention.accuracy | 0.6000 | 0.5500 | +0.0500 | 0.5000 | +0.1000 | 40 |" in card
    assert "| drift.kl |  | 0.0200 |" in card
    assert f"v{edit[:12]}" in card and f"-.-> v{published['attempt'][:12]}" in card


def test_card_license_comes_from_the_base():
    from seal.registry.hub.card import front_matter as card_meta
    from seal.registry.store.objects import build_manifest

    m = build_manifest(base="b" * 64, parents=[], kind="import", status="accepted", created_at="2026-01-01T00:00:00Z")
    smol = yaml.safe_load(card_meta(repo_id="me/a", base={"name": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                                          "source": "embedded", "info": {}}, manifest=m))
    assert smol["license"] == "apache-2.0" and smol["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    own = yaml.safe_load(card_meta(repo_id="me/a", base={"name": "org/m", "source": "hub", "info": {"license": "mit"}},
                                   manifest=m))
    assert own["license"] == "mit" and own["base_model_relation"] == "adapter"


# --- pull: trust, refs, revisions -----------------------------------------------------------------

def test_pull_refuses_an_unknown_signer_then_imports_with_trust(published, local_hub, tiny_base, tmp_path):
    from seal.registry.hub.withheld import WITHHELD_REF
    from seal.registry.policy import parse_policy

    a, b, key = published["a"], published["b"], published["key"]
    before = state(b)
    refused = b.run("pull", REPO)
    assert_one_line_error(refused, "not in your trust file", key, f"--trust {key}", code=1)
    assert state(b) == before
    assert_one_line_error(b.run("pull", REPO, "--trust", "ab" * 8), "matches no signer", code=2)
    got = b.json("pull", REPO, "--trust", key[:16])
    assert got["imported"] == [published["v0"], published["edit"], published["attempt"]]
    assert got["attempts"] == [published["attempt"]] and got["ref"] == f"hub/{REPO}"
    assert got["signers"] == [{"id": key, "versions": 3, "status": "trusted now (--trust)"}]
    assert b("verify").returncode == 0 and key in (b.cwd / ".seal" / "allowed_signers").read_text()
    # The puller's audit shows the attempt and the publisher's policy, whose bytes came along.
    audit = json.loads(b("audit", f"hub/{REPO}", "--format", "json").stdout)
    rejected = [v for v in audit["versions"] if v["status"] == "rejected"]
    assert [v["id"] for v in rejected] == [published["attempt"]]
    policy = a.json("show", published["edit"])["policy"]
    assert {v["approver"]["policy"] for v in audit["versions"] if v["kind"] == "edit"} == {policy}
    assert [(c["digest"], c["gates"]["js_vs_parent_max"]) for c in audit["policy"]["cited"]] == [(policy, 0.3)]
    assert f"cited by 2 version(s): `{policy}`" in b("audit", f"hub/{REPO}").stdout
    reg = registry_of(b)
    assert reg.store.get(policy) == (a.cwd / ".seal" / "policy.toml").read_bytes()
    assert parse_policy(reg.store.get(policy))[0]["js_vs_parent_max"] == 0.3 and reg.read_ref(WITHHELD_REF) is None
    # The checked-out adapter is the publisher's, byte for byte; pulling again changes nothing.
    b("checkout", f"hub/{REPO}", "--to", tmp_path / "out")
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == \
        (tiny_base["adapters"][1] / "adapter_model.safetensors").read_bytes()
    before = state(b)
    assert b.json("pull", REPO)["up_to_date"] and state(b) == before


def test_pull_a_tag_an_alias_and_a_version_id(published, local_hub):
    b, key, v0, edit = published["b"], published["key"], published["v0"], published["edit"]
    tagged = b.json("pull", f"{REPO}@v1", "--trust", key)
    # v0's lineage holds the attempt made on top of it, as `seal audit v0` would show it.
    assert tagged["head"] == v0 and tagged["imported"] == [v0, published["attempt"]]
    assert tagged["ref"] == f"hub/{REPO}/tags/v1"
    assert b.json("show", f"hub/{REPO}/tags/v1")["id"] == v0
    alias = b.json("pull", f"{REPO}@alias-production")
    assert alias["ref"] == f"hub/{REPO}/aliases/production" and alias["head"] == edit
    assert alias["imported"] == [edit] and alias["attempts"] == []
    assert b.json("pull", f"{REPO}@{edit}")["ref"] is None  # a version id sets no ref: the id names it
    assert b("verify").returncode == 0
    # A full version id always means that version: a Hub tag re-pointed to another commit is caught.
    hub_repo = local_hub.repos[("model", REPO)]
    hub_repo.tags[v0[:12]] = hub_repo.tags[edit[:12]]
    assert_one_line_error(b.run("pull", f"{REPO}@{v0}"), f"holds version {edit[:12]}, not {v0}", code=2)


def test_tracking_refs_never_move_backwards_without_force(published, local_hub, tiny_base):
    a, b, key, v0, edit = published["a"], published["b"], published["key"], published["v0"], published["edit"]
    assert b.json("pull", REPO, "--trust", key)["head"] == edit
    hub_repo = local_hub.repos[("model", REPO)]
    hub_repo.branches["main"] = hub_repo.tags[v0[:12]]  # someone rewound the Hub branch
    before = state(b)
    assert_one_line_error(b.run("pull", REPO), f"hub/{REPO} is at {edit[:12]}", "backwards", "--force", code=2)
    assert state(b) == before
    forced = b.json("pull", REPO, "--force")
    assert forced["moved"] and b.json("show", f"hub/{REPO}")["id"] == v0
    assert b.json("pull", f"{REPO}@v1")["head"] == v0
    hub_repo.tags["v1"] = hub_repo.tags[edit[:12]]  # a Hub tag that moved
    assert_one_line_error(b.run("pull", f"{REPO}@v1"), "tags do not move", code=2)
    assert b.json("show", f"hub/{REPO}/tags/v1")["id"] == v0
    assert b("verify").returncode == 0


def test_no_data_keeps_data_local_and_the_pull_records_it(local_hub, hf_api, tiny_base, tiny_base_record, tmp_path):
    from seal.registry.hub.withheld import WITHHELD_REF, withheld_digests

    a = new_registry(tmp_path, "a", tiny_base_record)
    b = new_registry(tmp_path, "b", tiny_base_record)
    a.json("import", tiny_base["adapters"][0], "-m", "v0")
    edit, attempt = record_edit(a, tiny_base["adapters"][1:3], message="private passage")
    push = a.run("push", REPO, "--no-data", "--json")
    assert push.returncode == 0 and "withholding 4 data blob(s)" in push.stderr
    out = json.loads(push.stdout)
    assert not any(u["role"] in ("trigger", "self_edit", "eval") for u in out["uploaded"])
    doc = hub_doc(local_hub)
    data = {m["manifest"][f]: f for m in doc["versions"] for f in ("trigger", "self_edit", "eval")
            if m["manifest"].get(f)}
    assert doc["withheld"] == data and len(data) == 4
    files = set(hf_api.list_repo_files(REPO))
    assert not any(f"seal/blobs/{d[7:]}" in files for d in data)
    got = b.json("pull", REPO, "--trust", signer_of(a))
    assert {w["digest"] for w in got["withheld"]} == set(data) and attempt in got["imported"]
    reg = registry_of(b)
    assert withheld_digests(reg) == set(data) and not any(reg.store.has(d) for d in data)
    assert b("verify").returncode == 0
    assert b.json("reflog", WITHHELD_REF)[0]["reason"].startswith(f"pull: hub:{REPO}@")
    mirrored = b.json("push", "seal-test/mirror", f"hub/{REPO}")  # passed on, still without the data
    assert {w["digest"] for w in mirrored["withheld"]} == set(data)
    assert json.loads(local_hub.read("seal-test/mirror", "seal/lineage.json"))["withheld"] == data
    # A lineage that withholds anything but data (here: an adapter) is refused.
    weights = next(iter(d for d in doc["blobs"] if doc["blobs"][d] > 1000))
    forged = dict(doc, blobs={d: s for d, s in doc["blobs"].items() if d != weights},
                  withheld={**doc["withheld"], weights: "trigger"})
    hf_api.create_commit(REPO, [_add("seal/lineage.json", json.dumps(forged).encode())], commit_message="forge")
    c = new_registry(tmp_path, "c", tiny_base_record)
    assert_one_line_error(c.run("pull", REPO, "--trust", signer_of(a)), "only data may be withheld", code=2)


def _add(path: str, data: bytes):
    from huggingface_hub import CommitOperationAdd

    return CommitOperationAdd(path, data)


# --- pull: hostile repos --------------------------------------------------------------------------

def test_oversized_files_are_refused_before_download(published, local_hub, monkeypatch):
    b, key = published["b"], published["key"]
    doc = hub_doc(local_hub)
    self_edit = next(v["manifest"]["self_edit"] for v in doc["versions"] if v["id"] == published["attempt"])
    junk = f"seal/blobs/{self_edit[7:]}"
    local_hub.plant(REPO, junk, 300 * 2**20)  # 300 MB where the lineage says a few bytes
    before = state(b)
    assert_one_line_error(b.run("pull", REPO, "--trust", key), junk, "314572800 bytes but the lineage says", code=2)
    monkeypatch.setenv("SEAL_PULL_MAX_BYTES", str(100 * 2**20))
    assert_one_line_error(Seal(b.cwd, b.env).run("pull", REPO, "--trust", key), "over the 104857600-byte limit", code=2)
    assert local_hub.requested(junk) == []  # not even a HEAD for it
    monkeypatch.delenv("SEAL_PULL_MAX_BYTES")
    # A server that lists the right size and then sends 300 MB: the download stops near the listed size.
    from hubserver import Filler

    hub_repo = local_hub.repos[("model", REPO)]
    hub_repo.branches["main"] = hub_repo.tags[published["edit"][:12]]  # undo the plant
    hub_repo.blobs[self_edit[7:]] = Filler(300 * 2**20)
    assert_one_line_error(Seal(b.cwd, b.env).run("pull", REPO, "--trust", key), f"{junk} sent more than its",
                          "stopped the download", code=2)
    planted = local_hub.plant(REPO, "seal/lineage.json", 300 * 2**20)
    assert_one_line_error(Seal(b.cwd, b.env).run("pull", REPO), "seal/lineage.json is 314572800 bytes", code=2)
    assert local_hub.requested(f"{planted}/seal/lineage.json") == []
    assert state(b) == before


def test_tampered_downloads_and_forged_manifests_import_nothing(published, local_hub, hf_api):
    b, key = published["b"], published["key"]
    before = state(b)
    doc = hub_doc(local_hub)
    manifests = {v["id"]: v["manifest"] for v in doc["versions"]}
    old_weights = f"seal/blobs/{manifests[published['v0']]['adapter']['weights'][7:]}"
    data = f"seal/blobs/{manifests[published['attempt']]['self_edit'][7:]}"
    forged = json.loads(json.dumps(doc))
    forged["versions"][1]["manifest"]["message"] = "totally harmless"  # v0's message edited, its id kept
    cases = [("adapter_model.safetensors", "does not match its digest"), (old_weights, "does not match its digest"),
             (data, "does not match its digest")]
    for path, needle in cases:
        good = local_hub.read(REPO, path)
        local_hub.tamper(REPO, path, good[:-1] + bytes([good[-1] ^ 1]))
        assert_one_line_error(b.run("pull", REPO, "--trust", key), needle, "nothing was imported", code=2)
        assert state(b) == before and not list((b.cwd / ".seal" / "tmp").iterdir())
        local_hub.tamper(REPO, path, good)
    hf_api.create_commit(REPO, [_add("seal/lineage.json", json.dumps(forged).encode())], commit_message="forge")
    assert_one_line_error(b.run("pull", REPO, "--trust", key), f"the manifest of version {published['v0'][:12]} does "
                          f"not hash to its id", code=2)
    assert state(b) == before


def test_pickles_unexpected_files_other_bases_and_bad_names_are_refused(published, local_hub, hf_api, tmp_path):
    from adapters import build_bare_llama
    from seal.editor.base import base_record_for

    a, b = published["a"], published["b"]
    before = state(b)
    hf_api.create_commit(REPO, [_add("train.py", b"print('hi')\n")], commit_message="x", create_pr=True)
    assert_one_line_error(b.run("pull", f"{REPO}@refs/pr/1"), "files a seal push does not write (train.py)")
    hf_api.create_commit(REPO, [_add("adapter_model.bin", b"\x80\x04evil pickle\x00")], commit_message="pickle")
    assert_one_line_error(b.run("pull", REPO), "pickle files (adapter_model.bin)")
    assert_one_line_error(a.run("push", "not a repo"), "not a valid Hub repo id")
    assert_one_line_error(b.run("pull", "seal-test/missing"), "was not found on the Hub")
    assert_one_line_error(b.run("pull", f"{REPO}@nope"), "revision 'nope' was not found")
    offline = Seal(b.cwd, {**b.env, "HF_ENDPOINT": "http://127.0.0.1:9"})
    from huggingface_hub import constants
    old = constants.ENDPOINT
    constants.ENDPOINT = "http://127.0.0.1:9"
    try:
        assert_one_line_error(offline.run("pull", REPO), "could not reach the Hub")
    finally:
        constants.ENDPOINT = old
    assert state(b) == before
    other = new_registry(tmp_path, "other", base_record_for(str(build_bare_llama(tmp_path / "base2", seed=1))))
    assert_one_line_error(other.run("pull", f"{REPO}@v1"), "pulled lineage is on base base", "this registry is on base2")


# --- concurrency and crashes -------------------------------------------------------------------------

def test_concurrent_pulls_of_one_lineage_leave_verify_clean(published, db_url, tiny_base_record, tmp_path):
    key = published["key"]
    puller = new_registry(tmp_path, "p", tiny_base_record, db_url)
    procs = [subprocess.Popen([*SEAL, "pull", REPO, "--trust", key, "--json"], cwd=puller.cwd, env=loud_bars(puller.env),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    assert [r[0] for r in results] == [0] * 6, [r[2] for r in results]
    imported = [json.loads(r[1])["imported"] for r in results]
    assert sorted(v for got in imported for v in got) == sorted([published["v0"], published["edit"], published["attempt"]])
    for _, _, err in results:  # the Hub client's progress bars stay quiet when stderr is not a terminal
        assert "%|" not in err and "Traceback" not in err, err
    check = puller.run("verify", "--json")
    assert check.returncode == 0, check.stdout
    assert puller.json("show", f"hub/{REPO}")["id"] == published["edit"]
    assert len(puller.json("reflog", f"refs/remotes/hub/{REPO}")) == 1


def test_kill_9_at_random_points_of_pull_leaves_verify_clean(published, local_hub, tiny_base_record, tmp_path):
    """Each pull is killed after a random number of Hub requests (listing, lineage, each blob) plus a
    random delay, so kills land while downloading, storing blobs and writing the rows."""
    key, rng = published["key"], random.Random(7)
    mark = len(local_hub.requests)
    new_registry(tmp_path, "calibrate", tiny_base_record)("pull", REPO, "--trust", key)
    requests = len(local_hub.requests) - mark  # what one pull asks the Hub, to time the kills by
    puller = new_registry(tmp_path, "k", tiny_base_record)
    for target in sorted(rng.sample(range(1, requests + 1), 3)) + [requests + 1]:
        mark = len(local_hub.requests)
        proc = subprocess.Popen([*SEAL, "pull", REPO, "--trust", key], cwd=puller.cwd, env=puller.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len(local_hub.requests) - mark < min(target, requests) and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.3) if target > requests else rng.uniform(0, 0.02))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check = puller.run("verify", "--json")
        assert check.returncode == 0, check.stdout
    assert list((puller.cwd / ".seal" / "tmp").iterdir())  # the kills left staging litter behind
    puller("gc", "--grace", "0")
    assert puller("verify").returncode == 0 and puller.json("gc", "--dry-run", "--grace", "0")["items"] == []
    assert puller.run("pull", REPO, "--trust", key).returncode == 0
    assert puller("verify").returncode == 0 and puller.json("show", f"hub/{REPO}")["id"] == published["edit"]


def test_concurrent_pushes_exactly_one_wins(local_hub, hf_api, tiny_base, tiny_base_record, tmp_path):
    from seal.registry.errors import RefConflict
    from seal.registry.hub import execute_push, plan_push

    a = new_registry(tmp_path, "a", tiny_base_record)
    b = new_registry(tmp_path, "b", tiny_base_record)
    a_id = a.json("import", tiny_base["adapters"][0], "-m", "from a")["id"]
    b_id = b.json("import", tiny_base["adapters"][1], "-m", "from b")["id"]
    reg_a, reg_b = registry_of(a), registry_of(b)
    plan_a, plan_b = plan_push(reg_a, "race/one"), plan_push(reg_b, "race/one")
    assert plan_a.head_commit == plan_b.head_commit
    execute_push(reg_a, plan_a)
    with pytest.raises(RefConflict) as caught:
        execute_push(reg_b, plan_b)
    assert caught.value.ref == "hub:race/one"
    assert json.loads(local_hub.read("race/one", "seal/lineage.json"))["head"] == a_id

    barrier = threading.Barrier(2)
    procs: dict = {}

    def run(name: str, seal: Seal) -> None:
        barrier.wait()
        procs[name] = Seal(seal.cwd, loud_bars(seal.env), process=True).run("push", "race/two")

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(p.returncode for p in procs.values()) == [0, 1], {n: p.stderr for n, p in procs.items()}
    assert not any("%|" in p.stderr for p in procs.values())  # no upload bars in a pipe
    winner = next(n for n, p in procs.items() if p.returncode == 0)
    assert_one_line_error(procs["b" if winner == "a" else "a"], "run `seal pull race/two`")
    assert json.loads(local_hub.read("race/two", "seal/lineage.json"))["head"] == {"a": a_id, "b": b_id}[winner]


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
    for wrap in (False, True):  # an LFS upload's failure arrives wrapped in a RuntimeError
        with pytest.raises(errors.SealError) as caught:
            with hub_errors("me/a"):
                try:
                    raise HfHubHTTPError(f"{status} Client Error", response=response)
                except HfHubHTTPError as e:
                    if wrap:
                        raise RuntimeError("Error while uploading 'x' to the Hub.") from e
                    raise
        assert type(caught.value).__name__ == kind and needle in str(caught.value)
        assert "\n" not in str(caught.value)
        assert not isinstance(caught.value, errors.RefConflict) or caught.value.ref == "hub:me/a"


def test_messages_name_hf_download_not_the_old_cli():
    root = Path(__file__).resolve().parent.parent
    offenders = [str(p.relative_to(root)) for folder in ("registry", "cli", "editor") for p in (root / folder).rglob("*.py")
                 if "huggingface-cli" in p.read_text()]
    assert offenders == []


@pytest.mark.parametrize("field, value, needle", [
    ("status", "approved-by-board", "status must be one of"),
    ("created_at", "9999-01-01T00:00:00.000000Z", "lies in the future"),
    ("created_at", 1700000000, "RFC 3339"),
    ("message", "all good\x1b[2J\x1b[31m", "control or bidirectional-override characters"),
])
def test_signed_manifests_that_break_the_schema_are_refused(field, value, needle, local_hub, hf_api, tiny_base,
                                                            tiny_base_record, tmp_path):
    """A lineage signed by its own (trusted on the spot) key still has to follow seal's schema."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from seal.registry.hub.lineage import LINEAGE_FORMAT
    from seal.registry.init import root_manifest
    from seal.registry.store.objects import blob_digest, build_manifest, version_id
    from seal.registry.store.signing import public_key_hex, signer_id

    b = new_registry(tmp_path, "b", tiny_base_record)
    weights = (tiny_base["adapters"][0] / "adapter_model.safetensors").read_bytes()
    manifest = build_manifest(base=tiny_base_record["id"], parents=[version_id(root_manifest(tiny_base_record))],
                              kind="import", status="accepted", adapter={"weights": blob_digest(weights), "config": {}})
    manifest[field] = value
    key = ed25519.Ed25519PrivateKey.generate()
    pub = public_key_hex(key)
    vid = version_id(manifest)
    doc = {"format": LINEAGE_FORMAT, "head": vid, "base": {"id": tiny_base_record["id"], "name": "base"},
           "signers": {signer_id(pub): pub}, "blobs": {blob_digest(weights): len(weights)}, "withheld": {},
           "versions": [{"id": vid, "manifest": manifest, "signature": key.sign(vid.encode()).hex(),
                         "signer": signer_id(pub)}]}
    hf_api.create_repo("evil/adapter")
    hf_api.create_commit("evil/adapter", [_add("adapter_config.json", b"{}\n"), _add("adapter_model.safetensors", weights),
                                          _add("seal/lineage.json", json.dumps(doc).encode())], commit_message="x")
    before = state(b)
    assert_one_line_error(b.run("pull", "evil/adapter", "--trust", signer_id(pub)), "breaks seal's schema", needle,
                          code=2)
    assert state(b) == before
