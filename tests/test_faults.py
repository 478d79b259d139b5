"""kill -9 at random points, and many writers at once: nothing half-done survives, nothing is lost.

After 50+ kills during import, checkout, tag, branch and pull: `verify` is clean, every ref has
its reflog row, `gc --dry-run` lists the litter the kills left, and `gc` removes it and nothing
else. Concurrent `checkout -b` calls each get their branch and its reflog row, on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SEAL, Seal, make_registry

try:
    from hubfixtures import local_hub  # noqa: F401
except ImportError:  # pragma: no cover
    from .hubfixtures import local_hub  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

REPO = "seal-test/faults"


def _litter(root: Path) -> set[str]:
    seal_dir = root / ".seal"
    found = {str(p) for p in (seal_dir / "tmp").glob("*")} if (seal_dir / "tmp").is_dir() else set()
    found |= {str(p) for p in (seal_dir / "objects" / "sha256").glob("**/.tmp-*")}
    found |= {str(p) for p in (root / "adapter").glob(".*.seal-*")} if (root / "adapter").is_dir() else set()
    return found


def test_gc_lists_a_checkout_marker_cut_short(tmp_path, tiny_base_record):
    """A kill between the marker's temp file and its rename (files.write_atomic) leaves litter gc lists."""
    make_registry(tmp_path, tiny_base_record).close()
    (tmp_path / "adapter").mkdir(exist_ok=True)
    left = tmp_path / "adapter" / "..seal-checkout.json.jp93zips.tmp"
    left.write_text("{")
    listed = {item["path"] for item in Seal(tmp_path).json("gc", "--dry-run", "--grace", "0")["items"]}
    assert str(left) in listed and _litter(tmp_path) <= listed


def test_gc_lists_a_policy_write_cut_short_and_only_that(tmp_path, tiny_base_record):
    """A kill inside files.write_atomic of policy.toml or its sync mark leaves .NAME.XXXXXXXX.tmp;
    an older seal left .NAME.tmp-PID. gc lists both, and not a user's file of another shape."""
    make_registry(tmp_path, tiny_base_record).close()
    seal_dir = tmp_path / ".seal"
    left = [seal_dir / ".policy.toml.k2m_9x0q.tmp", seal_dir / ".policy.synced.a1b2c3d4.tmp",
            seal_dir / ".policy.toml.tmp-4242"]
    kept = seal_dir / ".policy.toml.mine.tmp"
    for path in [*left, kept]:
        path.write_text("x")
    listed = {item["path"] for item in Seal(tmp_path).json("gc", "--dry-run", "--grace", "0")["items"]}
    assert {str(p) for p in left} <= listed and str(kept) not in listed


def _commands(tiny_base, step: int, pulled: bool) -> list[list[str]]:
    adapter = tiny_base["adapters"][step % 3]
    return [
        ["import", str(adapter), "-m", f"kill {step}"],
        ["checkout", "main"],
        ["checkout", "HEAD~1", "--to", f"out{step % 4}", "--force"],
        ["tag", f"t{step}"],
        ["branch", f"b{step}"],
        ["pull", REPO, "--trust", pulled],
    ]


def _timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([*SEAL, *cmd], cwd=cwd, env=env, capture_output=True)
    return time.perf_counter() - t


def test_kill_9_at_random_points(tmp_path, tiny_base, tiny_base_record, local_hub):
    publisher = tmp_path / "publisher"
    make_registry(publisher, tiny_base_record).close()
    pub = Seal(publisher, {**local_hub.client_env, "SEAL_ACTOR": "publisher"})
    for adapter in tiny_base["adapters"]:
        pub("import", adapter)
    pub("push", REPO)
    signer = pub.json("key", "show")["signer"]

    root = tmp_path / "victim"
    make_registry(root, tiny_base_record).close()
    env = {**os.environ, **local_hub.client_env, "SEAL_ACTOR": "victim"}
    seal = Seal(root, env)
    seal("import", tiny_base["adapters"][0])
    seal("import", tiny_base["adapters"][1])
    rng = random.Random(20261127)
    kinds = len(_commands(tiny_base, 0, signer))
    durations = [_timed(cmd, root, env) for cmd in _commands(tiny_base, 999, signer)]
    kills = 0
    for step in range(60):
        which = rng.randrange(kinds)
        cmd = _commands(tiny_base, step, signer)[which]
        proc = subprocess.Popen([*SEAL, *cmd], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 1.1) * durations[which])
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 40, kills  # most runs were really killed mid-flight

    verify = seal.run("verify", "--json")
    assert verify.returncode == 0, verify.stdout
    left = _litter(root)
    listed = {item["path"] for item in seal.json("gc", "--dry-run", "--grace", "0")["items"] if item["kind"] == "litter"}
    assert left <= listed, left - listed
    seal("gc", "--grace", "0")
    assert _litter(root) == set()
    assert seal.run("verify").returncode == 0
    assert seal.run("status").returncode == 0


def _checkout_b(root: Path, env: dict, n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([*SEAL, "checkout", "-b", f"b{i}", "main"], cwd=root, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]


def test_concurrent_checkout_b(seal, tiny_base, tiny_base_record, db_url):
    make_registry(seal.cwd, tiny_base_record, db_url).close()
    seal("import", tiny_base["adapters"][0])
    procs = _checkout_b(seal.cwd, seal.env, 16)
    outcomes = [(p.wait(120), p.stderr.read()) for p in procs]
    for code, err in outcomes:
        assert code in (0, 1) and "Traceback" not in err, err
    branches = {b["name"] for b in seal.json("branch")}
    created = {f"b{i}" for i, (code, _) in enumerate(outcomes) if code == 0}
    assert created and created <= branches
    assert branches - {"main"} == created  # a command that failed left no branch behind
    reflog = seal.json("reflog")
    for name in created:
        rows = [r for r in reflog if r["ref"] == f"refs/heads/{name}"]
        assert len(rows) == 1, (name, rows)
    assert seal.run("verify").returncode == 0
    assert seal.json("status")["state"] in ("clean", "stale")


def test_gc_keeps_every_referenced_blob(registry, reg, tiny_base):
    registry("import", tiny_base["adapters"][0])
    stray = reg.store.put(b"written by an attempt that was killed before it was recorded")
    young = reg.store.put(b"written a moment ago by a command still running")
    old = time.time() - 3 * 86400
    for digest in [*reg.store.iter_digests()]:
        if digest != young:
            os.utime(reg.store.path_of(digest), (old, old))
    dry = registry.json("gc", "--dry-run")
    assert [i["path"] for i in dry["items"] if i["kind"] == "unreferenced"] == [stray]
    assert reg.store.has(stray)
    registry("gc")
    assert not reg.store.has(stray) and reg.store.has(young)
    assert registry.run("verify").returncode == 0
    assert registry.json("gc", "--dry-run", "--grace", "0")["items"] == [
        {"kind": "unreferenced", "path": young, "size": len(b"written a moment ago by a command still running"),
         "age_s": pytest.approx(0, abs=60)}]


def test_gc_removes_only_what_seal_wrote(registry, reg, tiny_base, tmp_path):
    registry("import", tiny_base["adapters"][0])
    registry("checkout", "main")
    elsewhere = tmp_path / "scratch"
    elsewhere.mkdir()
    (elsewhere / "results.csv").write_text("mine")
    tmp = registry.cwd / ".seal" / "tmp"
    if tmp.exists():
        tmp.rmdir()
    tmp.symlink_to(elsewhere)
    user_files = [registry.cwd / ".seal-init-notes", registry.cwd / "adapter" / ".notes.seal-draft", elsewhere / "results.csv"]
    for f in user_files[:2]:
        f.write_text("mine")
    stale = registry.cwd / "adapter" / ".adapter_model.safetensors.seal-abcd1234"
    stale.write_text("half a file a killed checkout left")
    old = time.time() - 3 * 86400
    for f in [*user_files, stale]:
        os.utime(f, (old, old))
    listed = [i["path"] for i in registry.json("gc", "--dry-run")["items"]]
    assert listed == [str(stale)]
    registry("gc")
    assert all(f.read_text() == "mine" for f in user_files) and not stale.exists()
