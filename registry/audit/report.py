"""The compliance report as data: what changed this model, when, on what data, was it checked, who moved it.

>>> report = audit_report(Registry.open(), "HEAD")       # doctest: +SKIP
>>> write_report(report, "md", Path("audit.md"))          # doctest: +SKIP
[PosixPath('audit.md'), PosixPath('audit-drift.png')]

The report covers the path from the root to REV (every ancestor, oldest first) and every rejected
attempt made on top of a version of that path. Its JSON form follows ``AUDIT_SCHEMA`` (below, and
in the README), which maps onto what record-keeping rules such as Article 12 of the EU AI Act ask
of logs: the time of each event, the version and its parents, a reference to the input data
(content digests), the evaluation results with their method, the thresholds, the decision, who
approved and who moved the model, and the version to roll back to.

Drift reads as a series along the first-parent line: cumulative KL against the base, retention,
and ‖ΔW‖ from the base (from r×r products of the stored adapters).
:mod:`seal.registry.audit.rendering` turns the report into html (one standalone file) or Markdown
(for GitHub: a mermaid graph and the drift plot as a PNG file beside it). Score and gate names come
from :mod:`seal.registry.vocabulary`.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from .. import vocabulary as V
from ..bases import get_base
from ..errors import UserError
from ..files import write_atomic
from ..policy import POLICY_REF, parse_policy
from ..pooled import pooled_efficacy
from ..previews import first_lines, head_text
from ..store.graph import ancestors_oldest_first, attempts_on_path, first_parent_line
from ..store.objects import now_utc
from ..store.revisions import resolve_revision
from ..store.signing import check_signature
from ..store.versions import stored_manifest

FORMATS = ("md", "json", "html")
#: How much of a self-edit blob is read to show its first lines (JSON needs to parse whole).
SELF_EDIT_HEAD = 65536

SCHEMA_ID = "seal.audit/1"

AUDIT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "seal audit report",
    "type": "object",
    "required": ["schema", "generated_at", "subject", "base", "policy", "versions", "ref_moves", "drift"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "generated_at": {"type": "string", "description": "UTC time the report was made (ISO 8601)"},
        "subject": {"type": "string", "description": "the version id the report is about (REV)"},
        "base": {"type": "object", "description": "the frozen base model: fingerprint id, name, revision"},
        "policy": {
            "type": "object",
            "description": "the current policy (digest, thresholds, settings) and every recorded change with its reason",
            "required": ["current", "thresholds", "settings", "changes"],
            "properties": {
                "current": {"type": ["string", "null"], "description": "digest of the policy refs/meta/policy points at"},
                "thresholds": {"type": "array", "description": "gate, policy key, threshold (null: off), description"},
                "settings": {"type": "object"},
                "changes": {"type": "array", "description": "old, new, actor, reason, time, and the keys it changed"},
            },
        },
        "versions": {
            "type": "array",
            "description": "oldest first: the path from the root to REV and every rejected attempt on it",
            "items": {
                "type": "object",
                "required": ["id", "parents", "kind", "status", "on_path", "timestamp", "input_data",
                             "evaluation", "gates", "gated", "decision", "approver", "rollback_to",
                             "signature_valid"],
                "properties": {
                    "id": {"type": "string", "description": "version id: sha256 of the canonical manifest"},
                    "parents": {"type": "array", "items": {"type": "string"}},
                    "kind": {"enum": ["root", "edit", "merge", "import", "consolidate", "revert", "writer"]},
                    "status": {"enum": ["accepted", "rejected"]},
                    "on_path": {"type": "boolean", "description": "an ancestor of REV (else a rejected attempt)"},
                    "timestamp": {"type": "string", "description": "when the version was recorded (UTC)"},
                    "message": {"type": "string"},
                    "input_data": {"type": "object", "description": "trigger and eval digests, first lines (secrets redacted), findings"},
                    "self_edit": {"type": ["object", "null"], "description": "digest and first lines of what the model wrote"},
                    "evaluation": {"type": "array", "description": "scores: suite, metric, against, value, n, method"},
                    "gates": {"type": "array", "description": "check, value, threshold, passed, detail; ci_low, ci_high, n, rule where the gate has them"},
                    "gated": {"type": "boolean", "description": "the version passed through gates (false: e.g. an import recorded ungated)"},
                    "revert": {"type": ["object", "null"], "description": "for a revert: of, to, reason, and scores_from (where its scores were measured)"},
                    "decision": {"type": "object", "description": "accepted or not, and why"},
                    "approver": {"type": "object", "description": "author, signer key id, policy digest"},
                    "rollback_to": {"type": ["string", "null"], "description": "the first parent: what `seal revert` restores"},
                    "training": {"type": "object", "description": "device, library versions, hyperparameters, MLflow run"},
                    "signature_valid": {"type": "boolean"},
                },
            },
        },
        "ref_moves": {"type": "array", "description": "reflog rows touching these versions: ref, old, new, actor, reason, time"},
        "drift": {"type": "array", "description": "per first-parent version: kl_base, js_base, retention, delta_norm_base"},
        "efficacy": {"type": "object", "description": "pooled over the accepted edits on the path: containment, f1 "
                     "and margin_gain, each an estimate with a passage-clustered bootstrap 95% CI, edits and n"},
    },
}


# --- collecting -------------------------------------------------------------------------------

def _redacted_lines(text: str | None, n: int = 3) -> list[str]:
    """The first lines of stored text with secrets and personal data redacted: a report is shared."""
    from ..scan import redact, scan_text

    if not text:
        return []
    shown = "\n".join(first_lines(text, n, 160))
    return redact(shown, scan_text(shown)).splitlines()


def _self_edit_lines(reg, digest: str | None) -> list[str]:
    text = head_text(reg, digest, SELF_EDIT_HEAD)
    try:
        doc = json.loads(text) if text else None
    except json.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        return _redacted_lines(text)
    lines = next((doc[k] for k in ("lines", "sequences") if isinstance(doc.get(k), list) and doc[k]), None)
    if lines is None:
        records = doc.get("records") if isinstance(doc.get("records"), list) else []
        lines = [f"{r.get('prompt')} -> {r.get('target')} (model said: {r.get('predicted')})"
                 for r in records if isinstance(r, dict)]
    return _redacted_lines("\n".join(str(x) for x in lines), n=5) if lines else _redacted_lines(text)


def _collect(c, tip: str) -> dict:
    """Every row the report needs, read in one transaction."""
    path = ancestors_oldest_first(c, tip)
    ids = path + sorted(attempts_on_path(c, path) - set(path))
    rows, manifests = {}, {}
    for vid, text, signature, signer in c.all_in("SELECT id, manifest, signature, signer FROM versions "
                                                 "WHERE id IN ({marks})", ids):
        rows[vid] = {"signature": signature, "signer": signer}
        manifests[vid] = stored_manifest(text, vid)
    moves = [m for m in c.dicts("SELECT ref, old, new, actor, reason, time FROM reflog ORDER BY id")
             if m["new"] in rows or m["old"] in rows]
    return {
        "path": path, "ids": ids, "rows": rows, "moves": moves, "manifests": manifests,
        "first_line": set(first_parent_line(c, tip)),
        "policy_moves": c.dicts("SELECT ref, old, new, actor, reason, time FROM reflog WHERE ref = ? ORDER BY id",
                                (POLICY_REF,)),
    }


def audit_report(reg, rev: str = "HEAD") -> dict:
    """The report as data (schema ``seal.audit/1``); :func:`render` turns it into md, json or html."""
    with reg.read() as c:
        tip = resolve_revision(c, rev)
        data = _collect(c, tip)
        base = get_base(c, reg.base_id())
    trusted = {k: v.public_key for k, v in reg.trusted().items()}
    entries = [_entry(reg, vid, data, trusted)
               for vid in sorted(data["ids"], key=lambda v: (data["manifests"][v]["created_at"], v))]
    return {
        "schema": SCHEMA_ID,
        "generated_at": now_utc(),
        "subject": tip,
        "base": {"id": base["id"], "name": base["name"], "revision": base.get("revision"), "source": base["source"]},
        "policy": {**_policy(reg, data["policy_moves"]), "cited": _cited_policies(reg, data)},
        "versions": entries,
        "ref_moves": data["moves"],
        "drift": _drift(reg, data),
        # The accepted edits on the path to REV: what this line of edits taught, pooled.
        "efficacy": pooled_efficacy(data["manifests"][v] for v in data["path"]),
    }


def _decision(m: dict) -> dict:
    d = m.get("decision")
    if not isinstance(d, dict):
        return {"accepted": m["status"] == "accepted", "reason": f"{m['kind']} recorded as {m['status']}"}
    return {**d, "accepted": bool(d.get("accepted", m["status"] == "accepted")), "reason": str(d.get("reason") or "")}


# A pulled manifest is checked for its schema, not for the shape of every optional field: the
# report takes what it shows from those fields only in the shapes the editor writes.

def _revert(m: dict) -> dict | None:
    r = m.get("revert")
    if m["kind"] != "revert" or not isinstance(r, dict):
        return None
    return {k: (None if r.get(k) is None else str(r[k])) for k in ("of", "to", "reason", "scores_from")}


def _findings(info: dict) -> list[dict]:
    found = info.get("findings")
    return [{k: f.get(k, "?") for k in ("kind", "line", "column")}
            for f in (found if isinstance(found, list) else []) if isinstance(f, dict)]


def _score(s: dict) -> dict:
    against = s.get("against")
    return {**s, "against": against if against is None or isinstance(against, str) else str(against),
            "method": V.method_of(s)}


def _cited_policies(reg, data: dict) -> list[dict]:
    """The policies the versions cite (a pulled lineage cites its publisher's), with their gates."""
    cited: dict[str, list[str]] = defaultdict(list)
    for vid in data["ids"]:
        if data["manifests"][vid].get("policy"):
            cited[data["manifests"][vid]["policy"]].append(vid)
    out = []
    for digest, vids in sorted(cited.items()):
        values = _policy_values(reg, digest)
        gates = values[0] if values else None
        out.append({"digest": digest, "versions": len(vids), "gates": gates})
    return out


def _entry(reg, vid: str, data: dict, trusted: dict) -> dict:
    m, row = data["manifests"][vid], data["rows"][vid]
    info = m.get("trigger_info") if isinstance(m.get("trigger_info"), dict) else {}
    decision = _decision(m)
    train = m.get("train") or {}
    return {
        "id": vid, "parents": m["parents"], "kind": m["kind"], "status": m["status"],
        "on_path": vid in data["path"], "first_parent_line": vid in data["first_line"],
        "timestamp": m["created_at"], "message": m.get("message", ""),
        "input_data": {
            "trigger": m.get("trigger"), "trigger_kind": info.get("kind"),
            "trigger_first_lines": _redacted_lines(head_text(reg, m.get("trigger"))),
            "redacted": bool(info.get("redacted")), "findings": _findings(info),
            "eval": m.get("eval"), "adapter": (m.get("adapter") or {}).get("weights"),
        },
        "self_edit": {"digest": m["self_edit"], "first_lines": _self_edit_lines(reg, m["self_edit"])} if m.get("self_edit") else None,
        "writer": m.get("writer"),
        "evaluation": [_score(s) for s in m.get("scores", [])],
        "gates": m.get("audit", []),
        "gated": bool(decision.get("gated", bool(m.get("audit")))),
        "decision": decision,
        "revert": _revert(m),
        "approver": {"author": m.get("author", ""), "signer": row["signer"], "policy": m.get("policy"),
                     "trusted_signer": row["signer"] in trusted,
                     "moved_by": sorted({mv["actor"] for mv in data["moves"] if mv["new"] == vid})},
        "rollback_to": m["parents"][0] if m["parents"] else None,
        "training": {k: train.get(k) for k in (
            "device", "gpu", "torch", "cuda", "transformers", "peft", "hyperparameters", "seconds", "timings",
            "mlflow_run_id", "source") if train.get(k) is not None},
        "signature_valid": bool(row["signature"] and row["signer"] in trusted
                                and check_signature(trusted[row["signer"]], vid, row["signature"])),
    }


# --- the policy -------------------------------------------------------------------------------

def _policy_values(reg, digest: str | None) -> tuple[dict, dict] | None:
    """(thresholds, settings) of a recorded policy blob, or None when it is missing or unreadable."""
    from ..previews import blob_head

    raw = blob_head(reg, digest, 1 << 20)
    if raw is None:
        return None
    try:
        return parse_policy(raw, f"policy {digest}")
    except UserError:
        return None


def _policy(reg, moves: list[dict]) -> dict:
    """The current policy's digest and thresholds, and every recorded change with what it changed."""
    current = moves[-1]["new"] if moves else None
    values = _policy_values(reg, current)
    gates, settings = values if values else ({}, {})
    changes, before = [], None
    for mv in moves:
        after = _policy_values(reg, mv["new"])
        changed = None
        if before is not None and after is not None:
            old, new = {**before[0], **before[1]}, {**after[0], **after[1]}
            changed = [{"key": k, "old": old.get(k), "new": new.get(k)} for k in new if old.get(k) != new.get(k)]
        changes.append({**{k: mv[k] for k in ("old", "new", "actor", "reason", "time")}, "changed": changed})
        before = after
    return {
        "current": current,
        "readable": values is not None,
        "thresholds": [{"gate": g.name, "key": g.policy_key, "threshold": gates.get(g.policy_key),
                        "description": g.description} for g in V.GATES] if values else [],
        "settings": settings,
        "changes": changes,
    }


# --- drift ------------------------------------------------------------------------------------

def _drift(reg, data: dict) -> list[dict]:
    manifests = data["manifests"]
    base_retention = next((V.RETENTION.vs("base").of(x) for x in manifests.values()
                           if V.RETENTION.vs("base").of(x) is not None), None)
    out = []
    for vid in sorted(data["first_line"], key=lambda v: (manifests[v]["created_at"], v)):
        m = manifests[vid]
        root = m["kind"] == "root"
        out.append({
            "id": vid, "kind": m["kind"], "status": m["status"], "timestamp": m["created_at"],
            "kl_base": 0.0 if root else V.DRIFT_KL.vs("base").of(m),
            "js_base": 0.0 if root else V.DRIFT_JS.vs("base").of(m),
            "retention": base_retention if root else V.RETENTION.of(m),
            "delta_norm_base": 0.0 if root else _delta_norm(reg, m),
        })
    return out


def _delta_norm(reg, m: dict) -> float | None:
    from .. import lora_math

    delta = V.DELTA_NORM.vs("base").of(m)
    if delta is None and m.get("adapter") and reg.store.has(m["adapter"]["weights"]):
        try:
            delta = lora_math.total_delta_norm((m["adapter"]["config"], reg.store.path_of(m["adapter"]["weights"])))
        except Exception:  # a DoRA or foreign adapter: the series just has a gap here
            delta = None
    return delta


def drift_lines(drift: list[dict]) -> list[str]:
    """The terminal table of `seal audit --drift`."""
    def f(x):
        return "-" if x is None else f"{x:.4f}"

    head = f"{'version':<12}  {'kind':<11} {'status':<8} {'KL base':>8} {'JS base':>8} {'retention':>9} {'|dW| base':>9}"
    return [head] + [f"{d['id'][:12]}  {d['kind']:<11} {d['status']:<8} {f(d['kl_base']):>8} {f(d['js_base']):>8} "
                     f"{f(d['retention']):>9} {f(d['delta_norm_base']):>9}" for d in drift]


# --- output -----------------------------------------------------------------------------------

def render(report: dict, fmt: str) -> str:
    """The report as one text: json, html (standalone), or md for stdout (the plot left out, with a note)."""
    if fmt == "json":
        return json.dumps(report, indent=2) + "\n"
    if fmt not in FORMATS:
        raise UserError(f"unknown audit format {fmt!r}; use md, json or html")
    from .rendering import render_html, render_markdown

    return render_html(report) if fmt == "html" else render_markdown(report, image=None)


def drift_image_path(output: Path) -> Path:
    """Where the md report's drift plot goes: beside it, named after it (audit.md -> audit-drift.png)."""
    return output.with_name(f"{output.stem}-drift.png")


def write_report(report: dict, fmt: str, output) -> list[Path]:
    """Write the report to ``output``; for md also the drift plot beside it. Returns the files written.

    Each file is written to a temporary name in the same folder and renamed into place, so a
    reader never sees half a report.
    """
    output = Path(output)
    check_report_target(output, ours=REPORT_MARKS)
    if fmt != "md":
        write_atomic(output, render(report, fmt).encode("utf-8"))
        return [output]
    from .figures import drift_png
    from .rendering import render_markdown

    png = drift_png(report)
    image = drift_image_path(output)
    if png is not None:
        check_report_target(image, ours=(PNG_MARK,))
        write_atomic(image, png)
    write_atomic(output, render_markdown(report, image=image.name if png is not None else None).encode("utf-8"))
    return [output] + ([image] if png is not None else [])


PNG_MARK = b"seal audit"  # in the drift plot's PNG metadata: a file seal may replace
#: What an earlier report holds near its start (md and html title, the json schema): seal replaces
#: a file only when it finds one of them, so `-o notes.md` never overwrites the user's notes.
REPORT_MARKS = (b"seal audit:", SCHEMA_ID.encode())


def check_report_target(path: Path, ours: tuple[bytes, ...] = ()) -> None:
    """Refuse to write a report anywhere but outside any `.seal` folder, and over anything but a
    regular file holding one of the marks ``ours`` (a report or drift plot seal wrote before)."""
    from ..config import SEAL_DIRNAME
    from ..files import is_regular

    resolved = path.expanduser().resolve()
    if SEAL_DIRNAME in resolved.parts:
        raise UserError(f"{path} is inside a registry's {SEAL_DIRNAME} folder; write the report elsewhere")
    if not resolved.parent.is_dir():
        raise UserError(f"folder {path.parent} does not exist; create it or choose another -o")
    if os.path.lexists(resolved) and not is_regular(resolved):
        raise UserError(f"{path} exists and is not a regular file; choose another -o")
    if resolved.exists():
        with open(resolved, "rb") as f:
            head = f.read(8192)
        if not any(mark in head for mark in ours):
            raise UserError(f"{path} exists and seal did not write it; move it away or choose another -o")


def check_output(fmt: str, output: Path | None) -> None:
    """Refuse an unknown ``fmt`` and an ``output`` (with the md report's drift plot) that
    :func:`write_report` would refuse, before the report is built: a refusal costs nothing."""
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; use md, json or html")
    if output is not None:
        check_report_target(Path(output), ours=REPORT_MARKS)
        if fmt == "md":
            check_report_target(drift_image_path(Path(output)), ours=(PNG_MARK,))


