"""A registry shared by a team: folders attached by `seal clone` to one PostgreSQL + S3 (SeaweedFS)
registry, or to one SQLite file on one machine. Real servers and real processes, no mocks."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

from conftest import Seal
from seal.registry.errors import UserError
from test_edit import PASSAGE

QUICK = ["--epochs", "3", "--lr", "1e-3", "--max-tokens", "12", "--no-track"]
WRITERS = 8


def init_shared(path: Path, record: dict, db_url: str | None, objects_url: str | None):
    """The first folder of a team registry, as `seal init --db URL --objects URL` makes it."""
    from seal.registry.init import init_registry

    old = os.environ.get("SEAL_ACTOR")
    os.environ["SEAL_ACTOR"] = "alice"
    try:
        init_registry(path, base=record, db_url=db_url, objects_url=objects_url).close()
    finally:
        os.environ.pop("SEAL_ACTOR") if old is None else os.environ.__setitem__("SEAL_ACTOR", old)
    return path


def clone_args(a: Path, db_url: str | None, objects_url: str | None) -> list[str]:
    """What `seal clone` needs: the database URL, the store and the team's trust file (or A's folder)."""
    if db_url is None:
        return [str(a)]
    return [db_url, "--objects", objects_url, "--trust-file", str(a / ".seal" / "allowed_signers")]


@pytest.fixture
def pg_url(pg_admin_url) -> str:
    from pgcluster import create_database

    return create_database(pg_admin_url, "seal_" + uuid.uuid4().hex[:12])


@pytest.fixture
def blobs(s3_url) -> str:
    return f"{s3_url}/{uuid.uuid4().hex[:8]}"


def faults(folder: Path) -> list[dict]:
    from seal.registry.repo import Registry
    from seal.registry.verify import verify_registry

    reg = Registry.open(folder)
    try:
        return verify_registry(reg)
    finally:
        reg.close()


# --- two machines, one registry ------------------------------------------------------------------

@pytest.mark.postgres
def test_two_folders_share_one_registry(tmp_path, tiny_chat_base, tiny_chat_record, pg_url, blobs):
    from adapters import adapter_logits, build_lora_adapter

    a_dir = init_shared(tmp_path / "a", tiny_chat_record, pg_url, blobs)
    a, b = Seal(a_dir, {"SEAL_ACTOR": "alice"}), Seal(tmp_path / "b", {"SEAL_ACTOR": "bob"})
    x, y = (build_lora_adapter(tiny_chat_base, tmp_path / f"lora{i}", seed=i) for i in range(2))
    imported = a.json("import", x, "-m", "x")["id"]
    (a_dir / "passage.json").write_text(json.dumps(PASSAGE))
    a("edit", "--passage", "passage.json", *QUICK, "--json", check=False)
    a_head = a.json("show", "HEAD")["id"]
    assert a_head != imported and a.json("show", a_head)["parents"] == [imported]

    out = json.loads(Seal(tmp_path, {"SEAL_ACTOR": "bob"})("clone", *clone_args(a_dir, pg_url, blobs), "b",
                                                              "--name", "bob-box", "--json").stdout)
    assert out["trusted"] and out["branch"] == "main" and out["id"] == a_head
    assert out["head"] == "refs/worktrees/bob-box/HEAD" and out["signer"] != a.json("key", "show")["signer"]
    assert [e["id"] for e in b.json("log")] == [e["id"] for e in a.json("log")]

    # B checks out A's head by id, then by branch: the same PEFT folder, the same logits as A's.
    a("checkout", "main")
    b("checkout", a_head)
    by_id = adapter_logits(tiny_chat_base, b.cwd / "adapter")
    b("checkout", "main")
    assert b.json("status")["state"] == "clean" and b.json("status")["head"] == "main"
    assert (by_id == adapter_logits(tiny_chat_base, a_dir / "adapter")).all()
    assert (by_id == adapter_logits(tiny_chat_base, b.cwd / "adapter")).all()

    # B's own line, from A's import: HEADs are per folder, so A's HEAD stays on main.
    b("checkout", "-b", "bob", imported)
    mine = b.json("import", y, "-m", "y")["id"]
    assert a.json("status")["head"] == "main" and a.json("show", "HEAD")["id"] == a_head
    assert a.json("show", mine)["parents"] == [imported]          # A sees it at once
    report = b.json("diff", "bob", "main")                         # B's version against A's, from B
    assert report["differs"] and report["old"]["id"] == mine and report["new"]["id"] == a_head
    proc = b("merge", "main", "bob", "--method", "cat", "--no-track", "--json", check=False)
    assert proc.returncode in (0, 1), proc.stderr
    merged = json.loads(proc.stdout)
    merge_id = merged["candidates"][0]["id"]
    assert a.json("show", merge_id)["parents"] == [mine, a_head]  # B's HEAD line first; A sees it at once
    a("checkout", merge_id, "--to", tmp_path / "merged")
    assert faults(a_dir) == [] and faults(b.cwd) == []

    # A stranger: a folder whose key is in its own copy of the trust file, not in the team's.
    stranger_trust = tmp_path / "stranger_signers"
    shutil.copy(a_dir / ".seal" / "allowed_signers", stranger_trust)
    c = Seal(tmp_path / "c", {"SEAL_ACTOR": "mallory"})
    Seal(tmp_path)("clone", pg_url, "c", "--objects", blobs, "--trust-file", stranger_trust)
    forged = c.json("import", y, "-m", "looks legit")["id"]
    signer = c.json("key", "show")["signer"]
    for folder in (a_dir, b.cwd):
        found = faults(folder)
        assert any(f["version"] == forged and "not in the trust file" in f["fault"] for f in found), found
        assert any(signer[:12] in f["object"] for f in found)
        assert Seal(folder)("verify", check=False).returncode == 1
    assert faults(c.cwd) == []  # the stranger trusts itself: trust is whatever the named file says


# --- refusals: checked before anything is written --------------------------------------------------

@pytest.mark.postgres
def test_clone_refuses_before_writing(tmp_path, tiny_base_record, pg_url, pg_admin_url, blobs, s3_url):
    from pgcluster import create_database, free_port

    a_dir = init_shared(tmp_path / "a", tiny_base_record, pg_url, blobs)
    trust = str(a_dir / ".seal" / "allowed_signers")
    stranger = tmp_path / "stranger_signers"
    stranger.write_text("")
    empty_db = create_database(pg_admin_url, "empty_" + uuid.uuid4().hex[:8])
    seal = Seal(tmp_path, {"SEAL_ACTOR": "bob"})
    cases = {
        "cannot use database URL": ["mysql://me@host/db", "--objects", blobs, "--trust-file", trust],
        "neither a database URL": ["db.internal/seal", "--objects", blobs, "--trust-file", trust],
        "cannot reach the lineage database": [f"postgresql://me@127.0.0.1:{free_port()}/x", "--objects", blobs,
                                              "--trust-file", trust],
        "holds no seal registry": [empty_db, "--objects", blobs, "--trust-file", trust],
        "holds a password": [re.sub(r"//([^@/:]+)@", r"//\1:hunter2@", pg_url), "--objects", blobs,
                             "--trust-file", trust],
        "lacks blob": [pg_url, "--objects", f"{s3_url}/elsewhere", "--trust-file", trust],
        "bucket 'no-such-bucket' does not exist": [pg_url, "--objects", "s3://no-such-bucket/x", "--trust-file", trust],
        "missing does not exist": [pg_url, "--objects", blobs, "--trust-file", tmp_path / "missing"],
        "trusts none of the": [pg_url, "--objects", blobs, "--trust-file", stranger],
        "no branch": [pg_url, "--objects", blobs, "--trust-file", trust, "--branch", "nope"],
        "give the registry's object store": [pg_url, "--trust-file", trust],
        "MLFLOW_TRACKING_PASSWORD": [pg_url, "--objects", blobs, "--trust-file", trust,
                                     "--tracking", "https://me:secret@mlflow.internal"],
    }
    for expected, args in cases.items():
        proc = seal.run("clone", *args, "b")
        assert proc.returncode == 2 and expected in proc.stderr, (expected, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
        assert not (tmp_path / "b").exists(), expected

    seal("clone", pg_url, "b", "--objects", blobs, "--trust-file", trust, "--name", "bee")
    proc = seal.run("clone", pg_url, "b2", "--objects", blobs, "--trust-file", trust, "--name", "bee")
    assert proc.returncode == 2 and "already attached" in proc.stderr and not (tmp_path / "b2").exists()
    # A second `seal init` on the same database would share the first folder's HEAD: refused.
    with pytest.raises(UserError, match="seal clone"):
        init_shared(tmp_path / "d", tiny_base_record, pg_url, blobs)
    assert not (tmp_path / "d" / ".seal").exists()


def test_clone_of_a_folder_on_one_machine(tmp_path, tiny_base_record):
    """A folder lends its SQLite database, store and trust file. A key outside the team's trust
    file is named by verify until someone who keeps the file admits it."""
    a_dir = init_shared(tmp_path / "a", tiny_base_record, None, None)
    a, root = Seal(a_dir), Seal(tmp_path)
    out = json.loads(root("clone", a_dir, "b", "--tracking", "http://mlflow.internal:5000", "--json").stdout)
    assert out["trusted"] and out["trust_file"] == str(a_dir / ".seal" / "allowed_signers")
    b = Seal(tmp_path / "b")
    assert 'uri = "http://mlflow.internal:5000"' in (b.cwd / ".seal" / "config.toml").read_text()
    b("checkout", "-b", "exp", "main")
    assert b.json("status")["head"] == "exp" and a.json("status")["head"] == "main"
    assert set(a.json("log")[0]["refs"]) == {"HEAD -> main", "exp"}     # each folder shows its own HEAD only
    assert set(b.json("log")[0]["refs"]) == {"main", "HEAD -> exp"}
    assert [r["ref"] for r in b.json("reflog", "HEAD")] == ["refs/worktrees/" + out["name"] + "/HEAD"] * 2
    assert faults(a_dir) == [] and faults(b.cwd) == []

    own_copy = tmp_path / "own_signers"
    shutil.copy(a_dir / ".seal" / "allowed_signers", own_copy)
    s = json.loads(root("clone", a_dir, "s", "--trust-file", own_copy, "--json").stdout)
    assert a("verify", check=False).returncode == 1
    assert any(s["signer"][:12] in f["object"] for f in faults(a_dir))
    a("key", "trust", s["public_key"], "--name", "sam")            # admitted by the keeper of the file
    assert faults(a_dir) == [] and faults(b.cwd) == []
    text = b("clone", "--help").stdout
    assert "Example" in text and "--trust-file" in text


# --- many writers at once --------------------------------------------------------------------------

def team_writer(folder: str, index: int, start: str, adapters: list[str], imports: int, shared: int,
                gate: str) -> dict:
    """One worker machine, in its own process: a branch of its own, imports, then moves on main."""
    os.environ["SEAL_ACTOR"] = f"writer{index}"
    from seal.registry.errors import RefConflict
    from seal.registry.porcelain import UNGATED, import_adapter
    from seal.registry.repo import Registry
    from seal.registry.store.objects import build_manifest
    from seal.registry.worktree import checkout

    reg = Registry.open(folder)
    reg.head()
    Path(gate, f"ready-{index}").touch()
    while not Path(gate, "go").exists():
        time.sleep(0.005)
    branch = f"refs/heads/w{index}"
    moves = [(branch, checkout(reg, start, branch=f"w{index}")["id"])]
    for k in range(imports):
        moves.append((branch, import_adapter(reg, Path(adapters[(index + k) % len(adapters)]),
                                             message=f"w{index} import {k}")["id"]))
    adapter, base, conflicts = reg.manifest(moves[-1][1])["adapter"], reg.base_id(), 0
    for k in range(shared):
        while True:  # the contended branch: read, record, compare-and-swap; retry on a lost race
            head = reg.read_ref("refs/heads/main")
            manifest = build_manifest(base=base, parents=[head], kind="import", status="accepted", adapter=adapter,
                                      train={"source": "import"}, author=f"writer{index}",
                                      message=f"w{index} main {k}", extra={"decision": UNGATED})
            try:
                moves.append(("refs/heads/main", reg.record(manifest, ref="refs/heads/main", expected=head,
                                                            reason=f"w{index} main {k}")))
                break
            except RefConflict:
                conflicts += 1
    reg.close()
    return {"moves": moves, "conflicts": conflicts, "signer": reg.signer.id}


@pytest.mark.parametrize("where", ["sqlite+local", pytest.param("postgresql+s3", marks=pytest.mark.postgres)])
def test_eight_concurrent_writers(where, request, tmp_path, tiny_base, tiny_base_record):
    from seal.registry.clone import clone_registry
    from seal.registry.repo import Registry

    db_url = objects_url = None
    if where == "postgresql+s3":
        db_url, objects_url = request.getfixturevalue("pg_url"), request.getfixturevalue("blobs")
    a_dir = init_shared(tmp_path / "a", tiny_base_record, db_url, objects_url)
    folders = []
    for i in range(WRITERS):
        source = str(a_dir) if db_url is None else db_url
        clone_registry(tmp_path / f"w{i}", source, objects_url=objects_url, name=f"writer-{i}",
                       trust_file=None if db_url is None else a_dir / ".seal" / "allowed_signers")
        folders.append(str(tmp_path / f"w{i}"))
    reg = Registry.open(a_dir)
    before = len(reg.reflog())
    root = reg.resolve("main")
    gate = tmp_path / "gate"
    gate.mkdir()
    adapters = [str(p) for p in tiny_base["adapters"]]
    with ProcessPoolExecutor(WRITERS, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(team_writer, f, i, root, adapters, 2, 2, str(gate)) for i, f in enumerate(folders)]
        deadline = time.monotonic() + 120
        while len(list(gate.glob("ready-*"))) < WRITERS and time.monotonic() < deadline:
            time.sleep(0.02)
        (gate / "go").touch()
        during = []  # an auditor verifying while they write must see no fault that is not there
        while not all(f.done() for f in futures):
            during += faults(a_dir)
        results = [f.result(timeout=180) for f in futures]

    assert during == [] and faults(a_dir) == [] and faults(Path(folders[-1])) == []
    moves = [m for r in results for m in r["moves"]]
    ids = {vid for _, vid in moves} - {root}
    assert len(ids) == WRITERS * 4                                   # every version distinct
    versions = {e.id for e in reg.log(all=True)}
    assert ids <= versions and len(versions) == 1 + len(ids)         # none lost, none extra (no torn ones)
    for i, r in enumerate(results):                                   # each private line is exactly its writes
        mine = [vid for ref, vid in r["moves"] if ref == f"refs/heads/w{i}"]
        assert [e.id for e in reg.log(f"w{i}")][::-1] == [root, *mine[1:]]
    main_line = [e.id for e in reg.log("main")][::-1]
    main_moves = [vid for ref, vid in moves if ref == "refs/heads/main"]
    assert main_line[0] == root and sorted(main_line[1:]) == sorted(main_moves) and len(main_moves) == WRITERS * 2
    # One reflog row per move: the branch moves, plus each folder's HEAD following its new branch.
    rows = reg.reflog()
    assert len(rows) - before == len(moves) + WRITERS
    by_ref = {}
    for row in reversed(rows[: len(rows) - before]):
        by_ref.setdefault(row["ref"], []).append(row["new"])
    assert by_ref["refs/heads/main"] == main_line[1:]
    for i, r in enumerate(results):
        assert by_ref[f"refs/heads/w{i}"] == [vid for ref, vid in r["moves"] if ref == f"refs/heads/w{i}"]
        assert by_ref[f"refs/worktrees/writer-{i}/HEAD"] == [f"ref: refs/heads/w{i}"]
        assert {row["signer"] for row in rows[: len(rows) - before] if row["actor"] == f"writer{i}"} == {r["signer"]}
    reg.close()


def test_a_stale_policy_file_never_flips_the_team_policy(tmp_path, tiny_base_record):
    """Folder B changes the policy; folder A's untouched, older policy.toml must not move it back,
    while a change A makes by hand (even back to an older text) is A's policy and is recorded."""
    from seal.registry.policy import POLICY_REF, read_policy, record_policy
    from seal.registry.repo import Registry

    a_dir = init_shared(tmp_path / "a", tiny_base_record, None, None)
    Seal(tmp_path)("clone", a_dir, "b")
    b = Seal(tmp_path / "b")
    reg = Registry.open(a_dir)
    first = reg.read_ref(POLICY_REF)
    old_text = (a_dir / ".seal" / "policy.toml").read_bytes()
    b("policy", "set", "js_vs_parent_max", "0.3", "-m", "B calibrated it")
    changed = reg.read_ref(POLICY_REF)
    assert changed != first
    policy = read_policy(reg)                                   # A never touched its file
    assert policy.digest == changed and policy.gates["js_vs_parent_max"] == 0.3
    record_policy(reg, policy)
    assert reg.read_ref(POLICY_REF) == changed
    assert b"js_vs_parent_max = 0.3" in (a_dir / ".seal" / "policy.toml").read_bytes()   # brought up to date
    (a_dir / ".seal" / "policy.toml").write_bytes(old_text)     # A goes back to the old policy by hand
    assert read_policy(reg).digest == first
    record_policy(reg, read_policy(reg))
    assert reg.read_ref(POLICY_REF) == first
    reg.close()
