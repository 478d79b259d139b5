"""What each page shows, as plain data read through the public registry API; templates lay it out.

Every function takes an open :class:`seal.registry.Registry` and returns dicts and lists; none
writes, and none reads a file but through the registry's object store. Text from users and
models is passed on as it is: the templates escape it (Jinja2 autoescape), and secrets in
triggers and self-edits are masked as the audit report masks them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from seal.registry import vocabulary as V
from seal.registry.errors import SealError

#: How much of a trigger or self-edit blob a version page reads (the rest is named, not shown).
TEXT_HEAD = 32768
KIND_MARKS = {"root": "root", "edit": "edit", "merge": "merge", "import": "import", "consolidate": "consolidate",
              "revert": "revert", "writer": "writer"}


# --- small formatting --------------------------------------------------------------------------

def short(vid: str | None) -> str:
    return vid[:12] if vid else "-"


def ref_map(reg) -> dict[str, list[dict]]:
    """Version id → its refs as badges: branch heads, tags, aliases, remotes, HEAD told apart."""
    from seal.registry.store import refs as R

    kinds = ((R.HEADS, "branch"), (R.TAGS, "tag"), (R.ALIASES, "alias"), (R.REMOTES, "remote"))
    out: dict[str, list[dict]] = {}
    head_ref, head_id = reg.head()
    for name, target in reg.refs("refs/"):
        kind = next((k for prefix, k in kinds if name.startswith(prefix)), None)
        if kind is None or target.startswith("ref: "):
            continue
        out.setdefault(target, []).append({"name": R.short_name(name), "kind": kind, "current": name == head_ref})
    if head_id is not None and head_ref == "HEAD":
        out.setdefault(head_id, []).insert(0, {"name": "HEAD", "kind": "head", "current": True})
    return out


# --- the version page -------------------------------------------------------------------------

@dataclass(frozen=True)
class ScoreRow:
    name: str
    own: float | None
    parent: float | None
    base: float | None
    n: int | None
    method: str


def score_rows(scores: list[dict]) -> list[ScoreRow]:
    """One row per (suite, metric): the version's own value and its references' values."""
    rows = []
    for g in V.group_scores([s for s in scores or [] if isinstance(s, dict) and "suite" in s and "metric" in s]):
        rows.append(ScoreRow(f"{g.suite}.{g.metric}", _value(g.own), _value(g.by.get("parent")), _value(g.by.get("base")),
                             g.n, V.method_of({"suite": g.suite, "metric": g.metric})))
    return rows


def _value(row: dict | None) -> float | None:
    value = (row or {}).get("value")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def gate_rows(audit: list[dict]) -> list[dict]:
    """Every gate with its estimate, interval, n, rule, threshold and power (the MDE at 80%)."""
    out = []
    for g in audit or []:
        if not isinstance(g, dict):
            continue
        spec = V.GATES_BY_NAME.get(str(g.get("check")))
        out.append({
            "check": str(g.get("check", "?")), "about": spec.description if spec else "", "passed": bool(g.get("passed")),
            "value": g.get("value"), "ci_low": g.get("ci_low"), "ci_high": g.get("ci_high"), "n": g.get("n"),
            "threshold": g.get("threshold"), "mde": g.get("mde"), "rule": g.get("rule") or "",
            "detail": g.get("detail") or "",
        })
    return out


def masked(text: str | None) -> str | None:
    """``text`` with secrets and personal data masked, as the audit report shows it."""
    if text is None:
        return None
    from seal.registry.scan import redact, scan_text

    return redact(text, scan_text(text))


def masked_diff(report: dict) -> dict:
    """A `seal diff` document with secrets masked in the quoted data lines, as on the version page."""
    for v in report.get("data", {}).get("versions", []):
        for key in ("trigger", "self_edit"):
            if v.get(key):
                v[key] = {**v[key], "lines": [masked(line) for line in v[key]["lines"]]}
    return report


def trigger_view(reg, record: dict) -> dict | None:
    from seal.registry.previews import head_text

    digest = record.get("trigger")
    if not digest:
        return None
    info = record.get("trigger_info") if isinstance(record.get("trigger_info"), dict) else {}
    text = head_text(reg, digest, TEXT_HEAD)
    return {"digest": digest, "kind": info.get("kind") or "trigger", "title": info.get("title"),
            "text": masked(text), "missing": text is None, "cut": text is not None and len(text) >= TEXT_HEAD - 4}


def self_edit_view(reg, record: dict) -> dict | None:
    """The self-edit the model (or a writer) wrote: its lines, and who wrote it."""
    from seal.registry.previews import head_text

    digest = record.get("self_edit")
    if not digest:
        return None
    text = head_text(reg, digest, TEXT_HEAD * 2)
    lines: list[str] = []
    dropped: list[str] = []
    try:
        doc = json.loads(text) if text else None
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        lines = next(([str(x) for x in doc[k]] for k in ("lines", "sequences") if isinstance(doc.get(k), list) and doc[k]), [])
        if not lines and isinstance(doc.get("records"), list):
            lines = [f"{r.get('prompt')} → {r.get('target')} (the model said: {r.get('predicted')})"
                     for r in doc["records"] if isinstance(r, dict)]
        dropped = [str(x) for x in doc.get("dropped", []) if isinstance(x, (str, int, float))] \
            if isinstance(doc.get("dropped"), list) else []
    elif text:
        lines = text.splitlines()
    return {"digest": digest, "lines": [masked(x) for x in lines], "dropped": [masked(x) for x in dropped],
            "missing": text is None, "writer": writer_view(record.get("writer"))}


def writer_view(writer) -> dict | None:
    if not isinstance(writer, dict):
        return None
    from seal.editor.writer import writer_label  # torch-free

    target = writer.get("id") if writer.get("type") == "version" and isinstance(writer.get("id"), str) else None
    return {"label": writer_label(writer), "version": target, "source": writer.get("source"),
            "fields": {k: v for k, v in writer.items() if isinstance(v, (str, int, float)) and k != "type"}}


def signature_view(reg, record: dict) -> dict:
    from seal.registry.store.signing import check_signature

    signer, signature = record.get("signer"), record.get("signature")
    trusted = {k: v.public_key for k, v in reg.trusted().items()} if reg.seal_dir is not None else {}
    valid = bool(signature and signer in trusted and check_signature(trusted[signer], record["id"], signature))
    return {"signer": signer, "signed": bool(signature), "trusted": signer in trusted, "valid": valid}


def links_view(record: dict, moves: list[dict], mlflow_url: str | None) -> list[dict]:
    """Its MLflow run and the Hub commits it came from or went to, where they were recorded."""
    out = []
    run = (record.get("train") or {}).get("mlflow_run_id")
    if isinstance(run, str) and run:
        href = f"{mlflow_url.rstrip('/')}/#/runs/{run}" if mlflow_url else None
        out.append({"what": "MLflow run", "text": run, "href": href})
    for mv in moves:
        reason = str(mv.get("reason") or "")
        if mv.get("new") == record["id"] and reason.startswith("pull: hub:") and "@" in reason:
            repo, _, commit = reason[len("pull: hub:"):].partition("@")
            commit = commit.split(":")[0].strip()
            if repo and commit.isalnum():
                out.append({"what": "Hub commit", "text": f"{repo}@{commit[:12]}",
                            "href": f"https://huggingface.co/{repo}/commit/{commit}"})
    return out


def version_view(reg, rev: str, *, mlflow_url: str | None = None) -> dict:
    """Everything `seal show` knows about ``rev``, plus its parent diff and the refs that moved to it."""
    from seal.registry.diff import diff_revision
    from seal.registry.listing import moves_to

    record = reg.show(rev)
    vid = record["id"]
    moves = moves_to(reg, vid)
    train = record.get("train") if isinstance(record.get("train"), dict) else {}
    losses = train.get("losses") if isinstance(train.get("losses"), list) else []
    diff, diff_error = None, None
    if record.get("parents"):
        try:
            diff = masked_diff(diff_revision(reg, vid))
        except SealError as e:  # a missing or damaged blob costs the diff, not the rest of the page
            diff_error = str(e)
    return {
        "record": record, "id": vid, "short": short(vid), "refs": ref_map(reg).get(vid, []),
        "trigger": trigger_view(reg, record), "self_edit": self_edit_view(reg, record),
        "train": {k: v for k, v in train.items() if k != "losses" and not isinstance(v, (dict, list))},
        "hyperparameters": train.get("hyperparameters") if isinstance(train.get("hyperparameters"), dict) else {},
        "timings": train.get("timings") if isinstance(train.get("timings"), dict) else {},
        "losses": [x for x in losses if isinstance(x, (int, float)) or x is None],
        "scores": score_rows(record.get("scores") or []), "gates": gate_rows(record.get("audit") or []),
        "decision": record.get("decision") if isinstance(record.get("decision"), dict) else None,
        "revert": record.get("revert") if isinstance(record.get("revert"), dict) else None,
        "signature": signature_view(reg, record), "moves": moves, "links": links_view(record, moves, mlflow_url),
        "diff": diff, "diff_error": diff_error,
    }


# --- drift --------------------------------------------------------------------------------------

#: How many versions of a branch's first-parent line the drift page plots (the newest).
DRIFT_WINDOW = 500


def drift_view(reg, branch: str, *, window: int | None = None) -> dict:
    """A branch's first-parent line (its newest ``window`` versions): retention, refusal, KL and
    ‖ΔW‖ against the base per version, read from each manifest as `seal audit --drift` reads them,
    and the efficacy of its accepted edits (pooled, when the registry's audit offers it)."""
    from seal.registry.listing import first_parent_manifests

    window = DRIFT_WINDOW if window is None else window
    tip, line, more = first_parent_manifests(reg, branch, limit=window)
    norms: dict[str, float | None] = {}
    base_retention, base_refusal = (next((x.vs("base").of(m) for _, m in line if x.vs("base").of(m) is not None), None)
                                    for x in (V.RETENTION, V.REFUSAL))
    points, gains = [], []
    for i, (vid, m) in enumerate(line):
        root = m["kind"] == "root"
        points.append({
            "index": i, "id": vid, "kind": m["kind"], "status": m["status"], "timestamp": m["created_at"],
            "retention": base_retention if root else V.RETENTION.of(m),
            "refusal": base_refusal if root else V.REFUSAL.of(m),
            "kl_base": 0.0 if root else V.DRIFT_KL.vs("base").of(m),
            "js_base": 0.0 if root else V.DRIFT_JS.vs("base").of(m),
            "delta_norm_base": 0.0 if root else _delta_norm(reg, m, norms),
        })
        own, parent = V.EFFICACY_F1.of(m), V.EFFICACY_F1.vs("parent").of(m)
        if m["kind"] == "edit" and m["status"] == "accepted" and own is not None and parent is not None:
            gains.append({"id": vid, "gain": own - parent, "timestamp": m["created_at"]})
    from seal.registry import pooled

    return {"branch": branch, "subject": tip, "points": points, "gains": gains, "window": window, "more": more,
            "pooled": pooled.pooled_efficacy(m for _, m in line)}


def _delta_norm(reg, m: dict, cache: dict[str, float | None]) -> float | None:
    """‖ΔW‖ from the base: the recorded score, else computed from the adapter (once per blob)."""
    recorded = V.DELTA_NORM.vs("base").of(m)
    adapter = m.get("adapter") if isinstance(m.get("adapter"), dict) else None
    if recorded is not None or not adapter or not isinstance(adapter.get("weights"), str):
        return recorded
    digest = adapter["weights"]
    if digest not in cache:
        from seal.registry import lora_math
        from seal.registry.errors import SealError

        try:
            cache[digest] = lora_math.total_delta_norm((adapter.get("config") or {}, reg.store.path_of(digest))) \
                if reg.store.has(digest) else None
        except (SealError, OSError, ValueError, KeyError):  # a DoRA or foreign adapter: a gap in the plot
            cache[digest] = None
    return cache[digest]


# --- audit --------------------------------------------------------------------------------------

#: The longest history whose audit a page computes while the reader waits (the CLI has no limit).
AUDIT_MAX = 2000


class AuditTooLarge(Exception):
    """The audit asked for would take minutes: one line that says how to get it from the CLI."""


def audit_range(reg, rev: str, since: str | None, *, limit: int | None = None) -> dict:
    """The audit report of ``rev``, limited to what came after ``since`` when given (a range).

    The report is built over the whole path from the root (the audit module has no range yet) and
    then cut to the range, so a history longer than ``limit`` is refused with the command to run.
    """
    from seal.registry import audit
    from seal.registry.listing import first_parent_ids

    limit = AUDIT_MAX if limit is None else limit
    if len(first_parent_ids(reg, rev, limit)) > limit:
        raise AuditTooLarge(f"the history of {rev} is longer than {limit:,} versions, too long to audit while you wait; "
                            f"run `seal audit {rev} --format html -o audit.html` (or md, json)")
    report = audit.audit_report(reg, rev)
    if since:
        before = reg.ancestors(since)
        # What came after ``since``: the path's new versions, and the attempts made on them (an
        # attempt rejected on top of ``since`` or earlier belongs to the range before).
        kept = {v["id"] for v in report["versions"]
                if v["id"] not in before and (v["on_path"] or not set(v["parents"]) <= before)}
        report = {**report, "range": {"since": reg.resolve(since), "rev": report["subject"]},
                  "versions": [v for v in report["versions"] if v["id"] in kept],
                  "ref_moves": [m for m in report["ref_moves"] if m.get("new") in kept or m.get("old") in kept],
                  "drift": [d for d in report["drift"] if d["id"] in kept]}
    return report
