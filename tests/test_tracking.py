"""MLflow as its users expect, read back through MlflowClient: a SQLite store, and an `mlflow server`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import Seal, make_registry
from test_edit import FAST, PASSAGE


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_chat_record):
    """Two accepted edits, one K=2 edit, one consolidate and one interrupted edit, all tracked."""
    from seal.editor import stages

    root = tmp_path_factory.mktemp("tracked")
    make_registry(root, tiny_chat_record).close()
    (root / "passage.json").write_text(json.dumps(PASSAGE))
    seal = Seal(root, {"SEAL_ACTOR": "tracker"})
    edits = [json.loads(seal("edit", "--passage", "passage.json", *FAST, "--seed", str(i), "--json").stdout)
             for i in range(2)]
    k2 = json.loads(seal("edit", "--passage", "passage.json", *FAST, "--candidates", "2", "--lr", "30", "--json",
                         check=False).stdout)
    consolidated = json.loads(seal("consolidate", "main~2..main", "--json", check=False).stdout)
    real = stages.score

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    stages.score = interrupted
    try:
        killed = seal.run("edit", "--passage", "passage.json", *FAST, "--seed", "9", "--json")
    finally:
        stages.score = real
    return seal, edits, k2, consolidated, killed


def _client(seal):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{seal.cwd / '.seal' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("seal")
    return client, exp


def test_each_candidate_is_a_run_under_its_triggers_run(tracked):
    seal, edits, k2, _, _ = tracked
    client, exp = _client(seal)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=1000)}
    for cand in k2["candidates"]:
        v = seal.json("show", cand["id"])
        run = runs[v["train"]["mlflow_run_id"]]
        assert run.data.tags["seal.version_id"] == cand["id"] and run.data.tags["seal.status"] == cand["status"]
        assert run.info.status == ("FINISHED" if cand["status"] == "accepted" else "FAILED")
        assert run.data.tags["seal.failed_gates"] == (",".join(cand["failed_gates"]) or "-")
        parent = runs[run.data.tags["mlflow.parentRunId"]]
        assert parent.info.run_name == "edit Zorblat" and parent.info.status == ("FINISHED" if k2["decision"]["accepted"] else "FAILED")
        assert run.info.run_name == f"edit Zorblat c{v['decision']['candidate'] + 1}/2"
        # The run opened when training started: it lasts at least as long as the training did.
        assert run.info.end_time - run.info.start_time >= 0.9 * 1000 * v["train"]["seconds"]
        history = client.get_metric_history(run.info.run_id, "train.loss")
        finite = [x for x in v["train"]["losses"] if x is not None]
        assert [m.step for m in history] == [i + 1 for i, x in enumerate(v["train"]["losses"]) if x is not None]
        assert [m.value for m in history] == pytest.approx(finite)
        assert run.data.params["lr"] == "30.0" and run.data.params["reflect.temperature"] == "0.7"
        assert {"torch", "threads", "seed", "base", "target_modules"} <= set(run.data.params)
        assert "retention.accuracy" in run.data.metrics and "gate.js_vs_parent.passed" in run.data.metrics
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"audit.json", "self_edit.json"} <= arts
    names = {r.info.run_name for r in runs.values()}
    assert {"edit Zorblat c1/2", "edit Zorblat c2/2"} <= names


def test_accepted_versions_are_model_versions_and_aliases_mirror(tracked):
    from seal.registry.repo import Registry
    from seal.registry.tracking import mirror_alias, registered_model_name, ui_path

    seal, edits, k2, consolidated, _ = tracked
    client, exp = _client(seal)
    reg = Registry.open(seal.cwd)
    name = registered_model_name(reg)
    accepted = [e["decision"]["id"] for e in edits] + [r["decision"]["id"] for r in (k2, consolidated)
                                                       if r["decision"]["accepted"]]
    versions = client.search_model_versions(f"name='{name}'")
    assert sorted(v.tags["seal.version_id"] for v in versions) == sorted(accepted)
    first = next(v for v in versions if v.tags["seal.version_id"] == accepted[0])
    assert first.tags["seal.branch"] == "main" and first.source.startswith("runs:/") and first.run_id
    assert first.source.endswith("/seal") and "seal checkout" in first.description

    assert mirror_alias(reg, "champion", accepted[0]) == str(first.version)
    assert client.get_model_version_by_alias(name, "champion").tags["seal.version_id"] == accepted[0]
    mirror_alias(reg, "champion", accepted[1])  # aliases move
    assert client.get_model_version_by_alias(name, "champion").tags["seal.version_id"] == accepted[1]
    root = reg.log(all=True)[-1].id  # the root was never tracked: it is registered on demand
    number = mirror_alias(reg, "baseline", root)
    assert client.get_model_version_by_alias(name, "baseline").tags["seal.version_id"] == root and number
    assert mirror_alias(reg, "latest", root) is None  # MLflow reserves it: refused, reported, not raised
    assert ui_path(reg) == f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    reg.close()


def test_consolidate_is_tracked_with_clean_metric_names(tracked):
    seal, _, _, consolidated, _ = tracked
    client, _ = _client(seal)
    v = seal.json("show", consolidated["candidates"][0]["id"])
    run = client.get_run(v["train"]["mlflow_run_id"])
    checks = [a["check"] for a in v["audit"] if a["check"].startswith("consolidate_efficacy[")]
    assert len(checks) == 2
    for check in checks:
        vid = check[len("consolidate_efficacy["):-1]
        assert f"gate.consolidate_efficacy/{vid}.passed" in run.data.metrics
    assert run.data.params["consolidate.method"] == "svd"


def test_an_interrupted_edit_leaves_its_runs_killed(tracked):
    seal, _, _, _, killed = tracked
    assert killed.returncode == 130
    client, exp = _client(seal)
    statuses = [r.info.status for r in client.search_runs([exp.experiment_id], max_results=1000)
                if r.data.params.get("seed") == "9" or r.data.tags.get("seal.status") == "interrupted"]
    assert statuses and set(statuses) == {"KILLED"}


def test_many_params_and_odd_names_are_all_logged(tracked):
    from seal.registry.repo import Registry
    from seal.registry.tracking import Tracker, clean_name

    assert clean_name("consolidate_efficacy[0123abcd]") == "consolidate_efficacy/0123abcd"
    assert clean_name("a b:c/d-e.f_g") == "a b:c/d-e.f_g" and clean_name("x(y)=z!") == "x_y__z_"
    seal = tracked[0]
    reg = Registry.open(seal.cwd)
    tracker = Tracker(reg)
    run_id = tracker.start_run("many params", params={f"p[{i}]": i for i in range(250)})
    tracker.end_run(run_id, "FINISHED")
    reg.close()
    client, _ = _client(seal)
    params = client.get_run(run_id).data.params
    assert len(params) == 250 and params["p/249"] == "249"


def test_mirror_alias_without_any_tracking_is_a_no_op(tmp_path, tiny_chat_record):
    from seal.registry.tracking import mirror_alias

    reg = make_registry(tmp_path, tiny_chat_record)
    assert mirror_alias(reg, "champion", reg.resolve("main")) is None
    assert not (tmp_path / ".seal" / "mlflow.db").exists()
    reg.close()


def test_a_broken_tracking_store_costs_no_edit(tmp_path, tiny_chat_record, monkeypatch):
    make_registry(tmp_path, tiny_chat_record).close()
    (tmp_path / "passage.json").write_text(json.dumps(PASSAGE))
    seal = Seal(tmp_path, {"SEAL_ACTOR": "t", "MLFLOW_TRACKING_URI": "sqlite:////proc/no/such/dir/mlflow.db"})
    proc = seal("edit", "--passage", "passage.json", *FAST, "--json")
    out = json.loads(proc.stdout)
    assert out["decision"]["accepted"] and "going on without tracking" in proc.stderr
    v = seal.json("show", out["decision"]["id"])
    assert "mlflow_run_id" not in v["train"]


# --- against a real server ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    import importlib.util

    if importlib.util.find_spec("mlflow.server") is None:
        pytest.skip("`mlflow server` needs the full mlflow package: pip install 'seal-registry[ui]'")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", (tmp_path / "artifacts").as_uri()],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer within 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow  # starting `mlflow server` takes 30-40 s here; the SQLite store above covers the behaviour
def test_edit_is_tracked_on_an_mlflow_server(tmp_path, tiny_chat_record, mlflow_server):
    from mlflow.tracking import MlflowClient

    make_registry(tmp_path, tiny_chat_record).close()
    seal = Seal(tmp_path, {"SEAL_ACTOR": "t"})
    config = seal.cwd / ".seal" / "config.toml"
    config.write_text(config.read_text().replace("[tracking]\n", f'[tracking]\nuri = "{mlflow_server}"\n'))
    (tmp_path / "passage.json").write_text(json.dumps(PASSAGE))
    out = json.loads(seal("edit", "--passage", "passage.json", *FAST, "--json", check=False).stdout)
    vid = out["candidates"][0]["id"]
    run_id = seal.json("show", vid)["train"]["mlflow_run_id"]
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.data.tags["seal.version_id"] == vid
    assert "train.loss" in run.data.metrics and "drift.kl.vs_base" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run_id)} >= {"audit.json", "self_edit.json"}
    if out["decision"]["accepted"]:
        assert client.search_model_versions(f"tags.`seal.version_id`='{vid}'")
    assert not (seal.cwd / ".seal" / "mlflow.db").exists()  # nothing went to the local store
