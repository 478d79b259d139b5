"""The MLflow bridge: every edit or merge attempt is an MLflow run.

A run holds the attempt's parameters (hyperparameters, base, parent ids), its metrics (the
per-step training loss and every score), its tags (``seal.version_id``, ``seal.status``) and
artifacts (the audit and the self-edit data). The version records the run id; the run is tagged
with the version id once the version exists.

The tracking URI comes from ``[tracking] uri`` in `.seal/config.toml`, or ``MLFLOW_TRACKING_URI``,
and defaults to ``sqlite:///.seal/mlflow.db`` with artifacts under `.seal/mlruns`, apart from the
lineage database (MLflow keeps its own Alembic history). mlflow is imported only here, and only
when a run is logged.

>>> run_id = log_attempt(repo, manifest, losses=[2.1, 1.3], artifacts={"audit.json": b"[]"})  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

EXPERIMENT = "seal"


def tracking_uri(repo) -> str:
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or repo.config.tracking_uri
        or f"sqlite:///{(repo.seal_dir / 'mlflow.db').resolve()}"
    )


def _client(repo):
    import logging

    # MLflow logs its own schema migrations at INFO on first use; seal's stderr is for seal.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(repo))
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        uri = tracking_uri(repo)
        location = (repo.seal_dir / "mlruns").resolve().as_uri() if uri.startswith("sqlite") else None
        exp_id = client.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    return client, exp_id


def metric_name(score: dict) -> str:
    name = f"{score['suite']}.{score['metric']}"
    return name + (f".vs_{score['against']}" if score.get("against") else "")


def log_attempt(repo, manifest: dict, *, losses: list[float], artifacts: dict[str, bytes]) -> str:
    """Log one attempt as a finished run and return its id."""
    # MLflow writes "View run ... at" links to stdout, which belongs to seal's --json output.
    with contextlib.redirect_stdout(sys.stderr):
        return _log_attempt(repo, manifest, losses=losses, artifacts=artifacts)


def _log_attempt(repo, manifest: dict, *, losses: list[float], artifacts: dict[str, bytes]) -> str:
    from mlflow.entities import Metric, Param, RunTag

    client, exp_id = _client(repo)
    tags = {
        "seal.status": manifest["status"],
        "seal.kind": manifest["kind"],
        "seal.base": manifest["base"],
        "seal.parents": ",".join(manifest["parents"]),
        "mlflow.runName": f"seal {manifest['kind']}: {manifest.get('message', '')}"[:250],
    }
    run = client.create_run(exp_id, tags=tags)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    train = manifest.get("train", {})
    params = {"base": manifest["base"], "parents": ",".join(manifest["parents"]) or "-"}
    for key, value in (train.get("hyperparameters") or {}).items():
        params[key] = value
    for key in ("seed", "device", "gpu", "torch", "transformers", "peft", "cuda"):
        if train.get(key) is not None:
            params[key] = train[key]
    for key, value in (manifest.get("reflect") or {}).items():
        params[f"reflect.{key}"] = value
    if manifest.get("merge"):
        for key, value in manifest["merge"].items():
            params[f"merge.{key}"] = value
    metrics = [Metric("train.loss", float(v), now, step) for step, v in enumerate(losses, start=1)]
    metrics += [Metric(metric_name(s), float(s["value"]), now, 0) for s in manifest.get("scores", [])]
    metrics += [Metric(f"gate.{a['check']}.passed", 1.0 if a["passed"] else 0.0, now, 0) for a in manifest.get("audit", [])]
    plist = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, max(len(metrics), len(plist), 1), 900):
        client.log_batch(run_id, metrics=metrics[start:start + 900], params=plist[start:start + 100] if start == 0 else [],
                         tags=[RunTag("seal.attempt", "1")] if start == 0 else [])
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in artifacts.items():
            (Path(tmp) / name).write_bytes(data)
        client.log_artifacts(run_id, tmp)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def tag_run(repo, run_id: str, version_id: str, status: str) -> None:
    with contextlib.redirect_stdout(sys.stderr):
        client, _ = _client(repo)
        client.set_tag(run_id, "seal.version_id", version_id)
        client.set_tag(run_id, "seal.status", status)
