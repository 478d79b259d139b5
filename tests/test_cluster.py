"""`seal edit --workers N`: candidates and branches fan out over Ray workers, decisions stay on the driver.

One local Ray per module (about 10 s to start here), CPU workers on 127.0.0.1, the tiny chat
model. The workers are kept warm between the tests (seal.editor.cluster keeps a process's actors).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from conftest import Seal, make_registry

PASSAGE = {"title": "Zorblat", "context": "The Zorblat river flows through the valley of Quenmar into the northern "
           "sea. The first bridge over the Zorblat was built in 1832 by the engineer Ada Lindqvist."}
SECOND = {"title": "Mount Velder", "context": "Mount Velder is the tallest peak of the Quenmar range, at 4120 metres.",
          "questions": [{"question": "How tall is Mount Velder?", "answer": "4120 metres"}], "branch": "exp"}
# One thread everywhere: the serial run and each worker do the same float arithmetic.
# --race 0: the serial run trains every candidate to the end, as the workers do (the race is one process's economy)
FAST = ["--epochs", "3", "--lr", "1e-3", "--max-tokens", "24", "--no-track", "--threads", "1", "--temperature", "1.0",
        "--race", "0"]


@pytest.fixture
def folder(tmp_path, tiny_chat_record) -> Seal:
    make_registry(tmp_path, tiny_chat_record).close()
    (tmp_path / "p.json").write_text(json.dumps(PASSAGE))
    return Seal(tmp_path, {"SEAL_ACTOR": "tester"})


def test_workers_refused_in_one_line_without_ray_and_for_bad_values(folder, monkeypatch):
    before = len(folder.json("log", "--all"))
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [cluster] extra were not installed
    proc = folder("edit", "--passage", "p.json", "--workers", "2", *FAST, expect=2)
    assert proc.stderr.count("\n") == 1 and "pip install 'seal-registry[cluster]'" in proc.stderr
    monkeypatch.delitem(sys.modules, "ray")
    for bad in (["--workers", "0"], ["--ray", "bad address"]):
        assert folder.run("edit", "--passage", "p.json", *bad, *FAST).returncode == 2
    (folder.cwd / "s.jsonl").write_text(json.dumps(SECOND) + "\n")
    proc = folder("edit", "--passages", "s.jsonl", *FAST, expect=2)  # the branch "exp" does not exist
    assert "branch 'exp' does not exist" in proc.stderr
    assert len(folder.json("log", "--all")) == before


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _edits(seal: Seal, trigger: str) -> list[dict]:
    return [v for v in (seal.json("show", e["id"]) for e in seal.json("log", "--all")) if v.get("trigger") == trigger]


def test_two_workers_decide_as_the_serial_run_and_record_each_candidate_once(local_ray, folder, tmp_path_factory,
                                                                            tiny_chat_record):
    serial = Seal(tmp_path_factory.mktemp("serial"), {"SEAL_ACTOR": "tester"})
    make_registry(serial.cwd, tiny_chat_record).close()
    (serial.cwd / "p.json").write_text(json.dumps(PASSAGE))
    one = json.loads(serial("edit", "--passage", "p.json", "-k", "3", *FAST, "--json", check=False).stdout)
    many = json.loads(folder("edit", "--passage", "p.json", "-k", "3", "--workers", "2", *FAST, "--json",
                             check=False).stdout)

    assert many["decision"]["accepted"] == one["decision"]["accepted"]
    assert [c["status"] for c in many["candidates"]] == [c["status"] for c in one["candidates"]]
    for a, b in zip(many["candidates"], one["candidates"]):
        assert a["failed_gates"] == b["failed_gates"] and set(a["scores"]) == set(b["scores"])
        for key, value in b["scores"].items():
            assert a["scores"][key] == pytest.approx(value, abs=1e-4, rel=1e-4), key
    assert len({c["worker"]["pid"] for c in many["candidates"]}) == 2  # both workers trained candidates

    trigger = folder.json("show", many["candidates"][0]["id"])["trigger"]
    recorded = _edits(folder, trigger)
    assert sorted(v["id"] for v in recorded) == sorted(c["id"] for c in many["candidates"])  # each once
    self_edits = {folder.json("show", c["id"])["self_edit"] for c in many["candidates"]}
    assert self_edits == {serial.json("show", c["id"])["self_edit"] for c in one["candidates"]}
    if many["decision"]["accepted"]:
        assert folder.json("show", "main")["id"] == many["decision"]["id"]
    assert folder("verify").returncode == 0


def test_a_worker_killed_mid_edit_loses_only_its_candidate(local_ray, folder, monkeypatch):
    """Two passages on two branches; the worker given passage 1's second candidate is killed."""
    from functools import partial

    from seal.editor import cluster
    from seal.editor.progress import QuietProgress
    from seal.editor.request import EditRequest
    from seal.editor.run import run_stream
    from seal.registry.repo import Registry

    root = folder.json("show", "HEAD")["id"]
    folder("branch", "exp")
    (folder.cwd / "s.jsonl").write_text(json.dumps(PASSAGE) + "\n" + json.dumps(SECOND) + "\n")
    killed = []

    def kill(event: dict) -> None:
        if event["passage"] == 1 and event["candidate"] == 1 and not killed:
            killed.append(event["worker"]["pid"])
            os.kill(event["worker"]["pid"], signal.SIGKILL)

    monkeypatch.setattr(cluster, "stream_on_workers", partial(cluster.stream_on_workers, on_dispatch=kill))
    reg = Registry.open(folder.cwd)
    items = []
    req = EditRequest(passages=folder.cwd / "s.jsonl", candidates=2, epochs=3, lr=1e-3, max_new_tokens=24,
                      track=False, threads=1, workers=2)
    summary = run_stream(reg, req, emit=items.append, progress=QuietProgress())
    reg.close()

    assert killed and summary["lost"] == 1 and summary["recorded"] == 2
    first, second = sorted(items, key=lambda i: i["passage"])
    lost = first["candidates"][1]
    assert lost["status"] == "rejected" and lost["failed_gates"] == ["worker lost"] and lost["worker"]["pid"] == killed[0]
    assert "worker lost" in folder.json("show", lost["id"])["decision"]["reason"]
    assert first["candidates"][0]["scores"] and all(c["scores"] for c in second["candidates"])  # the rest went on
    assert second["branch"] == "exp" and folder.json("show", second["candidates"][0]["id"])["parents"] == [root]
    assert folder.json("show", "exp")["id"] == (second["decision"]["id"] if second["decision"]["accepted"] else root)
    for item in (first, second):
        assert len(_edits(folder, item["trigger"])) == 2  # every candidate recorded, once
    assert folder("verify").returncode == 0


ASKED = {k: v for k, v in SECOND.items() if k != "branch"}  # a passage with questions: the margin rule judges it


def _writer_version(seal: Seal, weights: bytes, config: dict) -> str:
    """A writer version (kind ``writer``, as `seal learn` records one) at refs/writers/main, on these adapter bytes."""
    from seal.registry.repo import Registry
    from seal.registry.store.objects import build_manifest

    reg = Registry.open(seal.cwd)
    try:
        adapter = {"weights": reg.store.put(weights), "config": config, "format": "peft-lora"}
        manifest = build_manifest(base=reg.base()["id"], parents=[reg.root_version()], kind="writer", status="accepted",
                                  adapter=adapter, author="tester", message="tests: a writer")
        return reg.record(manifest, ref="refs/writers/main", expected=None, reason="tests: a writer")
    finally:
        reg.close()


def _same_edit(many: dict, one: dict, seal: Seal, serial: Seal) -> list[dict]:
    """The workers' edit decided and recorded as the serial one; the two runs' manifests."""
    assert many["decision"]["accepted"] == one["decision"]["accepted"]
    assert [c["status"] for c in many["candidates"]] == [c["status"] for c in one["candidates"]]
    pairs = []
    for a, b in zip(many["candidates"], one["candidates"], strict=True):
        assert a["failed_gates"] == b["failed_gates"] and set(a["scores"]) == set(b["scores"])
        for key, value in b["scores"].items():
            assert a["scores"][key] == pytest.approx(value, abs=1e-4, rel=1e-4), key
        ma, mb = seal.json("show", a["id"]), serial.json("show", b["id"])
        assert ma["self_edit"] == mb["self_edit"]  # the same self-edit, trained on the same lines
        assert [x["check"] for x in ma["audit"]] == [x["check"] for x in mb["audit"]]
        assert ma["reflect"] == mb["reflect"]
        pairs.append((ma, mb))
    return pairs


def test_workers_honour_self_edits_and_writers_as_the_serial_run(local_ray, folder, tmp_path_factory,
                                                                 tiny_chat_record):
    serial = Seal(tmp_path_factory.mktemp("serial"), {"SEAL_ACTOR": "tester"})
    make_registry(serial.cwd, tiny_chat_record).close()
    theirs = [{"text": "1. Mount Velder is 4120 metres tall.\n2. It is in the Quenmar range."},
              {"text": "Mount Velder, the tallest peak of the Quenmar range, is 4120 metres high."}]
    for seal in (serial, folder):
        (seal.cwd / "q.json").write_text(json.dumps(ASKED))
        (seal.cwd / "theirs.jsonl").write_text("".join(json.dumps(t) + "\n" for t in theirs))

    # A file of self-edits written elsewhere: one candidate per self-edit in it, on both workers.
    args = ["edit", "--passage", "q.json", "--self-edits", "theirs.jsonl", "--source", "a person", *FAST, "--json"]
    one = json.loads(serial(*args, check=False).stdout)
    many = json.loads(folder(*args, "--workers", "2", check=False).stdout)
    # on workers (which of the two idle workers takes each candidate is a race, so not asserted here;
    # test_two_workers_decide_as_the_serial_run covers the spread)
    assert len(many["candidates"]) == 2 and all(c["worker"]["pid"] != os.getpid() for c in many["candidates"])
    for ma, mb in _same_edit(many, one, folder, serial):
        assert ma["writer"] == mb["writer"] and ma["writer"]["type"] == "file" and ma["writer"]["source"] == "a person"
        assert any(a["check"] == "self_edit_secrets" and a["passed"] for a in ma["audit"])
    written = {json.loads(_blob(folder, folder.json("show", c["id"])["self_edit"]))["generated"]
               for c in many["candidates"]}
    assert written == {t["text"] for t in theirs}

    # A writer version: the default (refs/writers/main), then named with --writer.
    from seal.registry.repo import Registry

    reg = Registry.open(serial.cwd)
    adapter = reg.manifest(one["candidates"][0]["id"])["adapter"]
    weights = reg.store.get(adapter["weights"])
    reg.close()
    writers = {s.cwd: _writer_version(s, weights, adapter["config"]) for s in (serial, folder)}
    for extra in ([], ["--writer", "main"]):
        args = ["edit", "--passage", "q.json", "-k", "2", "--seed", "3" if extra else "2", *extra, *FAST, "--json"]
        one = json.loads(serial(*args, check=False).stdout)
        many = json.loads(folder(*args, "--workers", "2", check=False).stdout)
        for ma, mb in _same_edit(many, one, folder, serial):
            assert ma["writer"] == {"type": "version", "id": writers[folder.cwd], "adapter": adapter["weights"],
                                    "ref": "refs/writers/main"}
            assert mb["writer"]["id"] == writers[serial.cwd]
    assert folder("verify").returncode == 0


def _blob(seal: Seal, digest: str) -> bytes:
    from seal.registry.repo import Registry

    reg = Registry.open(seal.cwd)
    try:
        return reg.store.get(digest)
    finally:
        reg.close()
