"""The MLflow bridge: each attempt is a run, each trigger a parent run, each accepted version a
registered model version, and seal's aliases are the registered model's aliases.

What a user of MLflow sees:

- a parent run per trigger (an edit of one passage, a merge, a consolidate), named after it;
- under it one run per candidate, named ``… c1/3``, opened when the candidate starts training,
  with the training loss logged while it trains (in batches, one call per flush, not per step),
  then every score, every gate's value and verdict, all parameters (in batches of 100, so none is
  dropped), the audit and the self-edit as artifacts, and the tags ``seal.version_id``,
  ``seal.status``, ``seal.decision`` and ``seal.failed_gates``;
- run status: **FINISHED** for an accepted attempt, **FAILED** for an attempt the gates rejected
  (or that diverged), so a rejection never shows as a green "Finished"; **KILLED** for an attempt
  interrupted by Ctrl-C. The parent run is FINISHED when one of its candidates was accepted;
- the Model Registry: each accepted version becomes a model version of the registered model
  ``seal-<registry folder>`` (``[tracking] model_name`` in `.seal/config.toml` overrides it),
  tagged ``seal.version_id`` and ``seal.branch``; :func:`mirror_alias` points an MLflow alias at
  the model version of a seal version (`seal alias champion REV`). The weights stay in seal:
  a model version's source is ``runs:/<run>/seal`` (the manifest) and its description says how to
  check the adapter out.

The experiment ``seal`` is tagged ``mlflow.experimentKind = custom_model_development``, so
MLflow 3's UI opens it as a model-training experiment with its runs, not on the GenAI pages::

    pip install 'seal-registry[ui]'
    mlflow ui --backend-store-uri sqlite:///.seal/mlflow.db
    # then open http://127.0.0.1:5000/#/experiments/<id>/runs?workflowType=machine_learning
    # (ui_path(reg) gives that path)

The tracking URI comes from ``MLFLOW_TRACKING_URI``, or ``[tracking] uri`` in
`.seal/config.toml`, and defaults to ``sqlite:///.seal/mlflow.db`` with artifacts under
`.seal/mlruns`, apart from the lineage database. mlflow is imported only here, and only when a
run is logged. A tracking failure (server down, disk full) never costs an edit its result: it
is reported once on stderr and the session carries on untracked.

>>> metric_name({"suite": "drift", "metric": "kl", "against": "base"})
'drift.kl.vs_base'
>>> clean_name("consolidate_efficacy[0123abcd]")
'consolidate_efficacy/0123abcd'
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

EXPERIMENT = "seal"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
_BAD = re.compile(r"[^A-Za-z0-9_\-. :/]")
MAX_PARAMS, MAX_METRICS, MAX_TAGS = 100, 1000, 100  # MLflow's log_batch limits


def tracking_uri(reg) -> str:
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or reg.config.tracking_uri
        or f"sqlite:///{(reg.seal_dir / 'mlflow.db').resolve()}"
    )


def clean_name(name: str) -> str:
    """A metric, param or tag key MLflow accepts: ``x[i]`` becomes ``x/i``, other characters ``_``."""
    name = re.sub(r"\[([^\]]*)\]", r"/\1", str(name))
    return _BAD.sub("_", name)[:250] or "_"


def metric_name(score: dict) -> str:
    name = f"{score['suite']}.{score['metric']}"
    return clean_name(name + (f".vs_{score['against']}" if score.get("against") else ""))


def registered_model_name(reg) -> str:
    configured = getattr(reg.config, "model_name", None)
    return clean_name(configured or f"seal-{reg.root.name}").replace("/", "-")


def _quiet():
    import logging

    # MLflow logs its own schema migrations at INFO on first use; seal's stderr is for seal.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow writes "View run ... at" links to stdout, which belongs to seal's --json output.
    return contextlib.redirect_stdout(sys.stderr)


class Tracker:
    """One MLflow client for a session. Every method is a no-op once tracking has failed."""

    def __init__(self, reg, warn=None):
        self.reg = reg
        self.warn = warn or (lambda message: sys.stderr.write(message + "\n"))
        self.failed = False
        self._client = None
        self._exp_id = None
        self.open_runs: set[str] = set()

    # --- the client ------------------------------------------------------------------------

    def client(self):
        if self._client is None:
            with _quiet():
                from mlflow.tracking import MlflowClient

                client = MlflowClient(tracking_uri=tracking_uri(self.reg))
                exp = client.get_experiment_by_name(EXPERIMENT)
                if exp is None:
                    uri = tracking_uri(self.reg)
                    location = (self.reg.seal_dir / "mlruns").resolve().as_uri() if uri.startswith("sqlite") else None
                    self._exp_id = client.create_experiment(EXPERIMENT, artifact_location=location,
                                                            tags={EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1]})
                else:
                    self._exp_id = exp.experiment_id
                    if exp.tags.get(EXPERIMENT_KIND[0]) is None:
                        client.set_experiment_tag(self._exp_id, *EXPERIMENT_KIND)
                self._client = client
        return self._client

    def _guard(self, what: str, fn, *args, **kwargs):
        if self.failed:
            return None
        try:
            with _quiet():
                return fn(*args, **kwargs)
        except Exception as e:  # a tracking failure must not cost the edit its result
            self.failed = True
            self.warn(f"seal: warning: MLflow {what} failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                      f"going on without tracking")
            return None

    # --- runs ------------------------------------------------------------------------------

    def start_run(self, name: str, *, parent: str | None = None, params: dict | None = None,
                  tags: dict | None = None) -> str | None:
        """Open a run now (status RUNNING); log its params in batches of 100."""
        return self._guard("start_run", self._start_run, name, parent, params or {}, tags or {})

    def _start_run(self, name, parent, params, tags) -> str:
        from mlflow.entities import Param

        client = self.client()
        all_tags = {"mlflow.runName": name[:250], **{clean_name(k): str(v)[:5000] for k, v in tags.items()}}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run_id = client.create_run(self._exp_id, tags=all_tags).info.run_id
        self.open_runs.add(run_id)
        plist = [Param(clean_name(k), _param_text(v)) for k, v in params.items()]
        for start in range(0, len(plist), MAX_PARAMS):
            client.log_batch(run_id, params=plist[start:start + MAX_PARAMS])
        return run_id

    def log_losses(self, run_id: str | None, first_step: int, values: list[float]) -> None:
        """The training loss of steps ``first_step, …``: one call per flush (non-finite values skipped)."""
        if run_id:
            self._guard("log_losses", self._log_losses, run_id, first_step, values)

    def _log_losses(self, run_id, first_step, values) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric("train.loss", float(v), now, first_step + i)
                   for i, v in enumerate(values) if v is not None and math.isfinite(v)]
        for start in range(0, len(metrics), MAX_METRICS):
            self.client().log_batch(run_id, metrics=metrics[start:start + MAX_METRICS])

    def finish_attempt(self, run_id: str | None, manifest: dict, vid: str | None, *,
                       artifacts: dict[str, bytes], failed_gates: list[str], reason: str) -> None:
        """Scores, gates, artifacts and the verdict; FINISHED if accepted, else FAILED."""
        if run_id:
            self._guard("finish_attempt", self._finish_attempt, run_id, manifest, vid, artifacts, failed_gates, reason)

    def _finish_attempt(self, run_id, manifest, vid, artifacts, failed_gates, reason) -> None:
        from mlflow.entities import Metric, RunTag

        client = self.client()
        now = int(time.time() * 1000)
        metrics = [Metric(metric_name(s), float(s["value"]), now, 0) for s in manifest.get("scores", [])
                   if _finite(s.get("value"))]
        for a in manifest.get("audit", []):
            metrics.append(Metric(clean_name(f"gate.{a['check']}.passed"), 1.0 if a["passed"] else 0.0, now, 0))
            if _finite(a.get("value")):
                metrics.append(Metric(clean_name(f"gate.{a['check']}.value"), float(a["value"]), now, 0))
        for key, value in ((manifest.get("train") or {}).get("timings") or {}).items():
            if _finite(value):
                metrics.append(Metric(clean_name(f"time.{key}"), float(value), now, 0))
        accepted = manifest["status"] == "accepted"
        tags = {"seal.status": manifest["status"], "seal.decision": reason,
                "seal.failed_gates": ",".join(failed_gates) or "-",
                "mlflow.note.content": f"**{manifest['status']}**: {reason}"}
        if vid:
            tags["seal.version_id"] = vid
        for start in range(0, max(len(metrics), 1), MAX_METRICS):
            client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS],
                             tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()] if start == 0 else [])
        if artifacts:
            with tempfile.TemporaryDirectory() as tmp:
                for name, data in artifacts.items():
                    path = Path(tmp) / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                client.log_artifacts(run_id, tmp)
        self._end(run_id, "FINISHED" if accepted else "FAILED")

    def end_run(self, run_id: str | None, status: str, tags: dict | None = None) -> None:
        if run_id:
            self._guard("end_run", self._end_tagged, run_id, status, tags or {})

    def _end_tagged(self, run_id, status, tags) -> None:
        for key, value in tags.items():
            self.client().set_tag(run_id, clean_name(key), str(value)[:5000])
        self._end(run_id, status)

    def _end(self, run_id: str, status: str) -> None:
        self.client().set_terminated(run_id, status)
        self.open_runs.discard(run_id)

    def kill_open_runs(self) -> None:
        """Mark every run still open as KILLED (Ctrl-C, or an error that stopped the command)."""
        for run_id in list(self.open_runs):
            self.end_run(run_id, "KILLED", {"seal.status": "interrupted"})

    # --- the model registry ----------------------------------------------------------------

    def register_version(self, vid: str, manifest: dict, *, run_id: str | None, branch: str | None) -> str | None:
        """Register an accepted version as a model version; its number, or None."""
        return self._guard("register_version", self._register, vid, manifest, run_id, branch)

    def _register(self, vid, manifest, run_id, branch) -> str:
        client = self.client()
        name = registered_model_name(self.reg)
        _ensure_registered_model(client, name)
        tags = {"seal.version_id": vid, "seal.kind": manifest["kind"], "seal.base": manifest["base"]}
        if branch:
            tags["seal.branch"] = branch
        source = f"runs:/{run_id}/seal" if run_id else f"seal:{vid}"
        version = client.create_model_version(
            name, source=source, run_id=run_id, tags=tags,
            description=f"seal version {vid}: {manifest.get('message', '')}\n\n"
                        f"The adapter lives in seal: `seal checkout {vid[:12]} --to DIR`.")
        return str(version.version)

    def model_version_of(self, vid: str) -> str | None:
        return self._guard("search_model_versions", self._find_version, vid)

    def _find_version(self, vid) -> str | None:
        name = registered_model_name(self.reg)
        found = self.client().search_model_versions(f"name='{name}' and tag.`seal.version_id`='{vid}'")
        return str(min(int(v.version) for v in found)) if found else None


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags={"seal": "1"},
                                       description="LoRA adapters recorded by seal; one model version per accepted version")
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(getattr(e, "error_code", "")) and "already exists" not in str(e):
            raise


def mirror_alias(reg, alias: str, vid: str | None) -> str | None:
    """Point the MLflow alias ``alias`` of this registry's registered model at seal version ``vid``
    (None deletes it). The version is registered first if it was not (e.g. it was imported, or
    tracked elsewhere). Returns the model version number, or None when MLflow refused or failed
    (reported on stderr; seal's own alias stands either way), or when this registry has never
    tracked anything (no tracking URI set and no `.seal/mlflow.db`): then there is nothing to
    mirror to, and `seal alias` does not pay for MLflow's import.

        >>> mirror_alias(reg, "champion", reg.resolve("main"))               # doctest: +SKIP
        '3'
    """
    if not (os.environ.get("MLFLOW_TRACKING_URI") or reg.config.tracking_uri
            or (reg.seal_dir is not None and (reg.seal_dir / "mlflow.db").exists())):
        return None
    tracker = Tracker(reg)
    return tracker._guard("alias", _mirror, tracker, alias, vid)


def _mirror(tracker: Tracker, alias: str, vid: str | None) -> str | None:
    client = tracker.client()
    name = registered_model_name(tracker.reg)
    if vid is None:
        _ensure_registered_model(client, name)
        try:
            client.delete_registered_model_alias(name, alias)
        except Exception:
            pass  # nothing to delete
        return None
    version = tracker._find_version(vid)
    if version is None:
        manifest = tracker.reg.manifest(vid)
        version = tracker._register(vid, manifest, None, None)
    client.set_registered_model_alias(name, alias, version)
    return version


def ui_path(reg) -> str | None:
    """The UI path of the seal experiment's runs (append it to the `mlflow ui` address)."""
    tracker = Tracker(reg, warn=lambda message: None)
    if tracker._guard("ui_path", tracker.client) is None:
        return None
    return f"/#/experiments/{tracker._exp_id}/runs?workflowType=machine_learning"


def _param_text(value) -> str:
    text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    return text[:6000]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["Tracker", "tracking_uri", "metric_name", "clean_name", "mirror_alias", "registered_model_name", "ui_path",
           "EXPERIMENT"]
