"""The compliance report: what changed this model, when, on what data, was it checked, who moved it.

>>> report = audit_report(Repository.find(), "HEAD")     # doctest: +SKIP
>>> render_markdown(report)[:40]                          # doctest: +SKIP

The report covers the path from the root to REV (every ancestor, oldest first) and every rejected
attempt made on top of a version of that path. Its JSON form follows ``AUDIT_SCHEMA`` (below, and
in the README), which maps onto what record-keeping rules such as Article 12 of the EU AI Act ask
of logs: the time of each event, the version and its parents, a reference to the input data
(content digests), the evaluation results with their method, the thresholds, the decision, who
approved and who moved the model, and the version to roll back to.

Drift reads as a series along the first-parent line: cumulative KL against the base, retention,
and ‖ΔW‖ from the base (from r×r products of the stored adapters). The report embeds it as a PNG
plot, and the lineage as an SVG graph, so the HTML and Markdown files stand alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict

from . import vocabulary as V
from .bases import get_base
from .errors import UserError
from .graph import first_parent_line, graph_lines
from .objects import now_utc
from .revisions import resolve_revision
from .signing import check_signature
from .versions import load_manifest

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
        "policy": {"type": "object", "description": "current policy digest and every recorded policy change"},
        "versions": {
            "type": "array",
            "description": "oldest first: the path from the root to REV and every rejected attempt on it",
            "items": {
                "type": "object",
                "required": ["id", "parents", "kind", "status", "on_path", "timestamp", "input_data",
                             "evaluation", "decision", "approver", "rollback_to", "signature_valid"],
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
                    "gates": {"type": "array", "description": "check, value, threshold, passed, detail"},
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
    },
}

def _first_lines(text: str, n: int = 3, width: int = 160) -> list[str]:
    from .scan import redact, scan_text

    text = redact(text, scan_text(text))
    return [line[:width] for line in text.splitlines() if line.strip()][:n]


def _blob_text(reg, digest: str | None) -> str | None:
    if not digest or not reg.store.has(digest):
        return None
    try:
        return reg.store.get(digest).decode("utf-8")
    except (UnicodeDecodeError, Exception):
        return None


def _self_edit_lines(reg, digest: str | None) -> list[str]:
    text = _blob_text(reg, digest)
    if text is None:
        return []
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return _first_lines(text)
    if isinstance(doc, dict):
        lines = doc.get("lines") or doc.get("sequences") or [
            f"{r.get('prompt')} -> {r.get('target')} (model said: {r.get('predicted')})" for r in doc.get("records", [])
        ]
        return _first_lines("\n".join(str(x) for x in lines), n=5)
    return _first_lines(text)


_PATH_ORDER = """
WITH RECURSIVE ancestry(id) AS (
    SELECT CAST(? AS VARCHAR(64)) UNION SELECT p.parent_id FROM version_parents p JOIN ancestry a ON p.version_id = a.id
)
SELECT v.id FROM versions v JOIN ancestry a ON v.id = a.id ORDER BY v.created_at, v.id
"""


def _collect(c, tip: str) -> dict:
    """Every row the report needs, read in one transaction."""
    path = [r[0] for r in c.all(_PATH_ORDER, (tip,))]
    on_path = set(path)
    attempts: list[str] = []
    for start in range(0, len(path), 500):
        part = path[start:start + 500]
        marks = ", ".join("?" for _ in part)
        attempts += [r[0] for r in c.all(
            f"SELECT DISTINCT v.id FROM versions v JOIN version_parents p ON p.version_id = v.id "
            f"WHERE p.parent_id IN ({marks}) AND v.status = 'rejected'", part) if r[0] not in on_path]
    ids = path + sorted(set(attempts))
    rows = {}
    for vid in ids:
        r = c.one("SELECT signature, signer FROM versions WHERE id = ?", (vid,))
        rows[vid] = {"signature": r[0], "signer": r[1]}
    moves = [m for m in c.dicts("SELECT ref, old, new, actor, reason, time FROM reflog ORDER BY id")
             if m["new"] in rows or m["old"] in rows]
    return {
        "path": path, "ids": ids, "rows": rows, "moves": moves,
        "first_line": set(first_parent_line(c, tip)),
        "keys": {r[0]: r[1] for r in c.all("SELECT id, public_key FROM signers")},
        "policy_moves": c.dicts("SELECT ref, old, new, actor, reason, time FROM reflog WHERE ref = 'refs/meta/policy' ORDER BY id"),
        "manifests": {vid: load_manifest(c, vid) for vid in ids},
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
        "policy": {"current": (data["policy_moves"][-1]["new"] if data["policy_moves"] else None),
                   "changes": [{k: p[k] for k in ("old", "new", "actor", "reason", "time")} for p in data["policy_moves"]],
                   "cited": _cited_policies(reg, data)},
        "versions": entries,
        "ref_moves": data["moves"],
        "drift": _drift(reg, data),
    }


def _cited_policies(reg, data: dict) -> list[dict]:
    """The policies the versions cite (a pulled lineage cites its publisher's), with their gates."""
    from .policy import parse_policy

    cited: dict[str, list[str]] = defaultdict(list)
    for vid in data["ids"]:
        if data["manifests"][vid].get("policy"):
            cited[data["manifests"][vid]["policy"]].append(vid)
    out = []
    for digest, vids in sorted(cited.items()):
        text = _blob_text(reg, digest)
        try:
            gates = parse_policy(text.encode(), digest)[0] if text is not None else None
        except UserError:
            gates = None
        out.append({"digest": digest, "versions": len(vids), "gates": gates})
    return out


def _entry(reg, vid: str, data: dict, trusted: dict) -> dict:
    m, row = data["manifests"][vid], data["rows"][vid]
    info = m.get("trigger_info") or {}
    trigger_text = _blob_text(reg, m.get("trigger"))
    decision = m.get("decision") or {"accepted": m["status"] == "accepted", "reason": f"{m['kind']} recorded as {m['status']}"}
    return {
        "id": vid, "parents": m["parents"], "kind": m["kind"], "status": m["status"],
        "on_path": vid in data["path"], "first_parent_line": vid in data["first_line"],
        "timestamp": m["created_at"], "message": m.get("message", ""),
        "input_data": {
            "trigger": m.get("trigger"), "trigger_kind": info.get("kind"),
            "trigger_first_lines": _first_lines(trigger_text) if trigger_text else [],
            "redacted": bool(info.get("redacted")), "findings": info.get("findings", []),
            "eval": m.get("eval"), "adapter": (m.get("adapter") or {}).get("weights"),
        },
        "self_edit": {"digest": m["self_edit"], "first_lines": _self_edit_lines(reg, m["self_edit"])} if m.get("self_edit") else None,
        "writer": m.get("writer"),
        "evaluation": [{**s, "method": V.method_of(s)} for s in m.get("scores", [])],
        "gates": m.get("audit", []),
        "gated": decision.get("gated", m["kind"] not in ("import",)),
        "decision": decision,
        "approver": {"author": m.get("author", ""), "signer": row["signer"], "policy": m.get("policy"),
                     "trusted_signer": row["signer"] in trusted,
                     "moved_by": sorted({mv["actor"] for mv in data["moves"] if mv["new"] == vid})},
        "rollback_to": m["parents"][0] if m["parents"] else None,
        "training": {k: m.get("train", {}).get(k) for k in (
            "device", "gpu", "torch", "cuda", "transformers", "peft", "hyperparameters", "seconds", "timings",
            "mlflow_run_id", "source") if m.get("train", {}).get(k) is not None},
        "signature_valid": bool(row["signature"] and row["signer"] in trusted
                                and check_signature(trusted[row["signer"]], vid, row["signature"])),
    }


def _drift(reg, data: dict) -> list[dict]:
    manifests = data["manifests"]
    base_retention = next((V.RETENTION.vs("base").of(x) for x in manifests.values()
                           if V.RETENTION.vs("base").of(x) is not None), None)
    out = []
    for vid in sorted(data["first_line"], key=lambda v: manifests[v]["created_at"]):
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
    from . import lora_math

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


def write_report(report: dict, fmt: str, output) -> list:
    """Write the report to ``output`` atomically; returns the files written."""
    from pathlib import Path

    output = Path(output)
    text = render(report, fmt)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(text)
    tmp.replace(output)
    return [output]


# --- pictures ---------------------------------------------------------------------------------

def drift_png(report: dict) -> bytes | None:
    """The drift series as a PNG: KL to the base, retention, and ‖ΔW‖ from the base."""
    series = report["drift"]
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(len(series)))
    labels = [d["id"][:7] for d in series]
    fig, axes = plt.subplots(3, 1, figsize=(8, 6.5), sharex=True)
    for ax, key, title, color in (
        (axes[0], "kl_base", "cumulative KL vs base (nats)", "#c0392b"),
        (axes[1], "retention", "retention (anchor accuracy)", "#2471a3"),
        (axes[2], "delta_norm_base", "‖ΔW‖ from base", "#7d3c98"),
    ):
        pts = [(x, d[key]) for x, d in zip(xs, series) if d[key] is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color)
        ax.set_ylabel(title, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xticks(xs)
    axes[-1].set_xticklabels(labels, rotation=45, fontsize=7)
    axes[0].set_title(f"drift along the lineage to {report['subject'][:12]}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def lineage_svg(report: dict) -> str:
    """The lineage as an SVG graph: one row per version, newest on top, lanes as in `seal log --graph`."""
    items = [{"id": v["id"], "parents": [p for p in v["parents"]], "v": v}
             for v in sorted(report["versions"], key=lambda v: (v["timestamp"], v["id"]), reverse=True)]
    known = {i["id"] for i in items}
    for i in items:
        i["parents"] = [p for p in i["parents"] if p in known]
    lane_of: dict[str, int] = {}
    row_of: dict[str, int] = {}
    row = 0
    for prefix, item in graph_lines(items):
        if item is not None:
            lane_of[item["id"]] = prefix.index("*") // 2
            row_of[item["id"]] = row
            row += 1
    dx, dy, x0, y0 = 26, 34, 20, 24
    width = x0 + dx * (max(lane_of.values(), default=0) + 1) + 560
    height = y0 + dy * max(row, 1) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="monospace" font-size="12">']
    pos = {vid: (x0 + dx * lane_of[vid], y0 + dy * row_of[vid]) for vid in lane_of}
    for i in items:
        x1, y1 = pos[i["id"]]
        for p in i["parents"]:
            x2, y2 = pos[p]
            out.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#888" stroke-width="2"/>')
    colors = {"accepted": "#1e8449", "rejected": "#c0392b"}
    text_x = x0 + dx * (max(lane_of.values(), default=0) + 1)
    for i in items:
        v = i["v"]
        x, y = pos[i["id"]]
        fill = "#7f8c8d" if v["kind"] == "root" else colors.get(v["status"], "#333")
        out.append(f'<circle cx="{x}" cy="{y}" r="7" fill="{fill}"><title>{html.escape(v["id"])}</title></circle>')
        label = f'{v["id"][:10]}  {v["kind"]:<7} {v["status"]:<8} {html.escape(v["message"][:48])}'
        out.append(f'<text x="{text_x}" y="{y + 4}" fill="{fill}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out)


# --- renderers --------------------------------------------------------------------------------

def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _version_md(v: dict) -> list[str]:
    mark = "accepted" if v["status"] == "accepted" else "**REJECTED**"
    lines = [
        f"### {v['id'][:12]} · {v['kind']} · {mark}",
        "",
        f"- when: {v['timestamp']}",
        f"- parents: {', '.join(p[:12] for p in v['parents']) or 'none (root: the bare base)'}",
        f"- message: {v['message']}",
        f"- author: {v['approver']['author'] or '–'}; signer {(v['approver']['signer'] or '–')[:12]} "
        f"(signature {'valid' if v['signature_valid'] else 'INVALID'}); moved by: {', '.join(v['approver']['moved_by']) or '–'}",
    ]
    data = v["input_data"]
    if data["trigger"]:
        lines.append(f"- trigger: `{data['trigger']}` ({data['trigger_kind'] or 'data'}"
                     + (", redacted" if data["redacted"] else "") + ")")
        lines += [f"    > {line}" for line in data["trigger_first_lines"]]
    if data["findings"]:
        lines.append("- findings: " + "; ".join(f"{f['kind']} at line {f['line']} col {f['column']}" for f in data["findings"]))
    if v["self_edit"]:
        lines.append(f"- self-edit: `{v['self_edit']['digest']}`")
        lines += [f"    > {line}" for line in v["self_edit"]["first_lines"]]
    if v["evaluation"]:
        lines.append("- scores: " + ", ".join(
            f"{s['suite']}.{s['metric']}{' vs ' + s['against'] if s.get('against') else ''}={_fmt(s['value'])}"
            for s in v["evaluation"]))
    if v["gates"]:
        lines.append("- gates: " + ", ".join(
            f"{g['check']} {'pass' if g['passed'] else 'FAIL'} ({_fmt(g['value'])} vs {_fmt(g['threshold'])})"
            for g in v["gates"]))
    lines.append(f"- decision: {'accepted' if v['decision'].get('accepted') else 'rejected'}: {v['decision'].get('reason', '')}")
    lines.append(f"- rollback to: {v['rollback_to'][:12] if v['rollback_to'] else '–'}")
    if v["training"].get("mlflow_run_id"):
        lines.append(f"- MLflow run: {v['training']['mlflow_run_id']}")
    lines.append("")
    return lines


def render_markdown(report: dict) -> str:
    on_path = [v for v in report["versions"] if v["on_path"]]
    rejected = [v for v in report["versions"] if not v["on_path"]]
    lines = [
        f"# seal audit: {report['subject'][:12]}",
        "",
        f"Base model **{report['base']['name']}** (fingerprint `{report['base']['id'][:16]}`); "
        f"report made {report['generated_at']}; schema `{report['schema']}`.",
        f"{len(on_path)} version(s) on the path from the root, {len(rejected)} rejected attempt(s) along it, "
        f"{len(report['ref_moves'])} ref move(s), {len(report['policy']['changes'])} policy record(s).",
        "",
        "## Drift from the base",
        "",
        "| version | kind | KL vs base | JS vs base | retention | ‖ΔW‖ from base |",
        "|---|---|---|---|---|---|",
    ]
    for d in report["drift"]:
        lines.append(f"| {d['id'][:12]} | {d['kind']} | {_fmt(d['kl_base'])} | {_fmt(d['js_base'])} | "
                     f"{_fmt(d['retention'])} | {_fmt(d['delta_norm_base'])} |")
    lines += ["", "## Versions (oldest first)", ""]
    for v in report["versions"]:
        lines += _version_md(v)
    lines += ["## Ref moves", "", "| time | ref | old | new | actor | reason |", "|---|---|---|---|---|---|"]
    for mv in report["ref_moves"]:
        lines.append(f"| {mv['time']} | {mv['ref']} | {(mv['old'] or '–')[:12]} | {(mv['new'] or '–')[:12]} | "
                     f"{mv['actor']} | {mv['reason']} |")
    lines += ["", "## Policy", ""]
    for p in report["policy"]["changes"]:
        lines.append(f"- {p['time']}: {p['reason']} → `{p['new']}` by {p['actor']}")
    for p in report["policy"].get("cited", []):
        gates = ", ".join(f"{k}={v}" for k, v in (p["gates"] or {}).items()) or "its text is not here"
        lines.append(f"- cited by {p['versions']} version(s): `{p['digest']}` ({gates})")
    lines += ["", "## Figures", "", "The lineage (newest on top; green accepted, red rejected):", "", lineage_svg(report), ""]
    png = drift_png(report)
    if png:
        lines += ["Drift along the first-parent line:", "",
                  f"![drift](data:image/png;base64,{base64.b64encode(png).decode()})", ""]
    return "\n".join(lines)


def render_html(report: dict) -> str:
    import re

    md = render_markdown(report)
    png = drift_png(report)
    svg = lineage_svg(report)
    rows = "".join(
        f"<tr><td>{d['id'][:12]}</td><td>{d['kind']}</td><td>{_fmt(d['kl_base'])}</td><td>{_fmt(d['js_base'])}</td>"
        f"<td>{_fmt(d['retention'])}</td><td>{_fmt(d['delta_norm_base'])}</td></tr>" for d in report["drift"])
    body = []
    for v in report["versions"]:
        text = "\n".join(_version_md(v)[1:])
        cls = "rejected" if v["status"] == "rejected" else "accepted"
        body.append(f'<section class="{cls}"><h3>{html.escape(_version_md(v)[0][4:].replace("**", ""))}</h3>'
                    f"<pre>{html.escape(text)}</pre></section>")
    moves = "".join(
        f"<tr><td>{mv['time']}</td><td>{html.escape(mv['ref'])}</td><td>{(mv['old'] or '–')[:12]}</td>"
        f"<td>{(mv['new'] or '–')[:12]}</td><td>{html.escape(mv['actor'])}</td><td>{html.escape(mv['reason'])}</td></tr>"
        for mv in report["ref_moves"])
    title = re.sub(r"[<>&]", "", md.splitlines()[0][2:])
    img = f'<img alt="drift" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>' if png else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; font-size: 13px; }}
section {{ border-left: 4px solid #1e8449; padding-left: 1em; margin: 1em 0; }}
section.rejected {{ border-left-color: #c0392b; }}
pre {{ white-space: pre-wrap; font-size: 12px; }}
</style></head><body>
<h1>{title}</h1>
<p>Base model <b>{html.escape(report['base']['name'])}</b> (fingerprint <code>{report['base']['id'][:16]}</code>);
report made {report['generated_at']}; schema <code>{report['schema']}</code>.</p>
<h2>Lineage</h2>
<div id="lineage">{svg}</div>
<h2>Drift from the base</h2>
<div id="drift">{img}</div>
<table><tr><th>version</th><th>kind</th><th>KL vs base</th><th>JS vs base</th><th>retention</th><th>‖ΔW‖ from base</th></tr>{rows}</table>
<h2>Versions (oldest first)</h2>
{''.join(body)}
<h2>Ref moves</h2>
<table><tr><th>time</th><th>ref</th><th>old</th><th>new</th><th>actor</th><th>reason</th></tr>{moves}</table>
</body></html>
"""


def render(report: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2) + "\n"
    if fmt == "md":
        return render_markdown(report)
    if fmt == "html":
        return render_html(report)
    raise UserError(f"unknown audit format {fmt!r}; use md, json or html")
