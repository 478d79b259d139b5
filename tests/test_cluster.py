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
FAST = ["--epochs", "3", "--lr", "1e-3", "--max-tokens", "24", "--no-track", "--threads", "1", "--temperature", "1.0"]


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
