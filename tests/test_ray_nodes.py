"""`seal edit --passages --workers 2 --ray ADDRESS` on a Ray cluster of two nodes, started here as
an operator starts one (`ray start --head`, then `ray start --address` for a second raylet with
CPUs and a resource of its own), standing in for two machines (tests/raynodes.py).

The driver is a `seal` process of its own, as a user runs it; the tiny chat model, one thread per
worker and in the serial run, so both do the same float arithmetic. Marked slow: starting the
nodes and the workers' processes takes most of a minute on a 2-core machine.
"""

from __future__ import annotations

import json

import pytest

from conftest import Seal, make_registry
from raynodes import RayNodes, run_stream
from test_cluster import PASSAGE, SECOND, FAST, _edits

pytestmark = pytest.mark.slow
K = 2


@pytest.fixture(scope="module")
def nodes():
    pytest.importorskip("ray")
    with RayNodes(head_cpus=1) as cluster:
        cluster.add(num_cpus=1, resources={"node2": 1})
        cluster.wait_alive(2)
        yield cluster


@pytest.fixture
def second(nodes):
    """The second node, alive (started again when an earlier test killed it)."""
    if not nodes.live()[1:]:
        nodes.add(num_cpus=1, resources={"node2": 1})
        nodes.wait_alive(2)
    return nodes.live()[1]


def _folder(path, record) -> Seal:
    make_registry(path, record).close()
    (path / "s.jsonl").write_text(json.dumps(PASSAGE) + "\n" + json.dumps(SECOND) + "\n")
    seal = Seal(path, {"SEAL_ACTOR": "tester"})
    seal("branch", "exp")
    return seal


def test_a_stream_over_two_nodes_records_each_candidate_once_with_the_serial_decisions(
        nodes, second, tmp_path_factory, tiny_chat_record):
    serial = _folder(tmp_path_factory.mktemp("serial"), tiny_chat_record)
    one = [json.loads(x) for x in serial("edit", "--passages", "s.jsonl", "-k", str(K), *FAST, "--json",
                                         check=False).stdout.splitlines()]
    folder = _folder(tmp_path_factory.mktemp("nodes"), tiny_chat_record)
    run = run_stream(nodes, folder.cwd, ["--passages", "s.jsonl", "-k", str(K), "--workers", "2", *FAST],
                     env={"SEAL_ACTOR": "tester"})
    assert run["code"] == 0, run["stderr"]  # a stream exits 0 once it ran to its end
    many = run["items"]

    assert [i["passage"] for i in sorted(many, key=lambda i: i["passage"])] == [1, 2]
    for a, b in zip(sorted(many, key=lambda i: i["passage"]), one):
        assert a["branch"] == b["branch"] and a["decision"]["accepted"] == b["decision"]["accepted"]
        assert [c["status"] for c in a["candidates"]] == [c["status"] for c in b["candidates"]]
        for x, y in zip(a["candidates"], b["candidates"]):
            assert x["failed_gates"] == y["failed_gates"] and set(x["scores"]) == set(y["scores"])
            for key, value in y["scores"].items():
                assert x["scores"][key] == pytest.approx(value, abs=1e-4, rel=1e-4), key
            assert folder.json("show", x["id"])["self_edit"] == serial.json("show", y["id"])["self_edit"]
        recorded = _edits(folder, a["trigger"])
        assert sorted(v["id"] for v in recorded) == sorted(c["id"] for c in a["candidates"])  # each once
    # Both machines worked: each node's worker trained candidates.
    assert {j["node"] for j in run["jobs"] if j["candidate"] is not None} == {0, nodes.nodes.index(second)}
    assert {c["worker"]["pid"] for i in many for c in i["candidates"]} == \
        {j["pid"] for j in run["jobs"] if j["candidate"] is not None}
    assert "0 candidate(s) lost" in run["stderr"]
    assert folder("verify").returncode == 0


def test_the_second_node_killed_mid_edit_loses_only_its_candidate(nodes, second, tmp_path_factory,
                                                                 tiny_chat_record):
    folder = _folder(tmp_path_factory.mktemp("killed"), tiny_chat_record)
    root = folder.json("show", "HEAD")["id"]
    run = run_stream(nodes, folder.cwd, ["--passages", "s.jsonl", "-k", str(K), "--workers", "2", *FAST],
                     kill=second, env={"SEAL_ACTOR": "tester"})
    assert run["killed"], run["stderr"]
    assert run["code"] == 0, run["stderr"]
    killed = next(j for j in run["jobs"] if j.get("killed"))
    items = {i["passage"]: i for i in run["items"]}
    assert sorted(items) == [1, 2] and all(not i.get("lost") for i in items.values())

    lost = [(i["passage"], c) for i in items.values() for c in i["candidates"] if c["failed_gates"] == ["worker lost"]]
    assert len(lost) == 1, lost
    passage, candidate = lost[0]
    assert (passage, items[passage]["candidates"].index(candidate)) == (killed["passage"], killed["candidate"])
    assert candidate["status"] == "rejected" and candidate["worker"]["pid"] == killed["pid"]
    assert "worker lost" in folder.json("show", candidate["id"])["decision"]["reason"]
    assert "1 candidate(s) lost" in run["stderr"]
    # The rest completed, scored, on the head's worker once the second node was gone.
    others = [c for i in items.values() for c in i["candidates"] if c is not candidate]
    assert len(others) == 2 * K - 1 and all(c["scores"] for c in others)
    after = [j for j in run["jobs"] if j["t"] > killed["t"]]
    assert all(j["node"] == 0 for j in after)
    assert killed["node"] == nodes.nodes.index(second) and killed["pid"] in run["killed"]
    for item in items.values():
        assert len(_edits(folder, item["trigger"])) == K  # every candidate recorded, once
    exp = items[2]
    assert exp["branch"] == "exp" and folder.json("show", exp["candidates"][0]["id"])["parents"] == [root]
    assert folder("verify").returncode == 0
