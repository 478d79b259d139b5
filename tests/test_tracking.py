"""MLflow tracking against an `mlflow server` on 127.0.0.1, started and stopped by the test."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_edit import FAST, PASSAGE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    if mlflow is None:
        pytest.skip("`mlflow server` needs the full mlflow package: pip install 'seal-registry[ui]'")
    port = _free_port()
    proc = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
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


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_edit_is_tracked_on_an_mlflow_server(seal, tiny_chat_base, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    seal("init", ".", "--base", tiny_chat_base)
    config = seal.cwd / ".seal" / "config.toml"
    config.write_text(config.read_text() + f'uri = "{mlflow_server}"\n')
    (tmp_path / "passage.json").write_text(json.dumps(PASSAGE))
    out = json.loads(seal("edit", "--passage", "passage.json", *FAST, "--json", check=False).stdout)
    vid = out["candidates"][0]["id"]
    run_id = seal.json("show", vid)["train"]["mlflow_run_id"]
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.data.tags["seal.version_id"] == vid
    assert "train.loss" in run.data.metrics and "drift.kl.vs_base" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run_id)} >= {"audit.json", "self_edit.json"}
    assert not (seal.cwd / ".seal" / "mlflow.db").exists()  # nothing went to the local store
