"""The audit report as a reviewer reads it: html (one standalone file) and Markdown (for GitHub).

Both come from Jinja2 templates in ``registry/audit/templates/`` over one view of the report built
here, so the two formats say the same things: the versions, each score beside its reference
values and the differences, each gate with its value, interval, threshold and verdict (a failed
gate marked FAIL), the policy with its thresholds and every recorded change, the ref moves, the
drift, and the lineage graph. Every value that came from the registry is escaped: in html by
Jinja2's autoescape, in Markdown by :func:`md_escape`, which every ``{{ }}`` passes through.

>>> md_escape("a|b *c* <script>")
'a\\\\|b \\\\*c\\\\* &lt;script&gt;'
>>> num(0.123456), signed(0.05), num(None)
('0.1235', '+0.05', '–')
"""

from __future__ import annotations

import base64
import functools
import html
import re
from pathlib import Path

from markupsafe import Markup

from .. import vocabulary as V
from .figures import gating

TEMPLATES = Path(__file__).parent / "templates"
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")


# --- formatting -------------------------------------------------------------------------------

def num(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def signed(value) -> str:
    return "–" if value is None else f"{value:+.4g}"


def md_escape(value) -> str:
    """Text that Markdown shows as it is: one line, no HTML, no emphasis, links or table breaks."""
    if isinstance(value, Markup):
        return str(value)
    text = re.sub(r"\s+", " ", str("–" if value is None else value))
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def md_code(value) -> Markup:
    text = "–" if value is None else " ".join(str(value).replace("`", "'").split())
    return Markup(f"`{text}`")


@functools.cache
def _environment(kind: str):
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined, autoescape=kind == "html",
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        finalize=md_escape if kind == "md" else None,
    )
    env.filters.update(num=num, signed=signed, code=md_code, when=lambda t: str(t).replace("T", " ")[:19])
    return env


# --- the view ---------------------------------------------------------------------------------

def score_table(evaluation: list[dict]) -> dict:
    """Scores grouped by measurement: the version's value, each reference value, and the difference.

    A row with ``against`` and no own value (a divergence from the parent, say) is a measurement
    of this version relative to the reference, so it stands on its own line, never under a
    reference column where it would read as the reference's value.
    """
    refs: list[str] = []
    rows = []
    for group in V.group_scores(evaluation):
        suite, metric, own = group.suite, group.metric, group.own
        if own is None:
            rows += [{"name": f"{suite}.{metric} vs {against}", "value": s["value"], "n": s.get("n"),
                      "method": s.get("method") or V.method_of(s), "refs": {}} for against, s in group.by.items()]
            continue
        others = group.refs
        refs += [a for a in others if a not in refs]
        rows.append({"name": f"{suite}.{metric}", "value": own["value"], "n": own.get("n"),
                     "method": own.get("method") or V.method_of(own),
                     "refs": {a: {"value": s["value"], "delta": own["value"] - s["value"]} for a, s in others.items()}})
    return {"refs": refs, "rows": rows}


def gate_rows(gates: list[dict]) -> list[dict]:
    """Each gate with what it measures (from the vocabulary), its value, interval, threshold and verdict."""
    out = []
    for g in gates:
        spec = V.GATES_BY_NAME.get(g["check"])
        interval = (g["ci_low"], g["ci_high"]) if g.get("ci_low") is not None and g.get("ci_high") is not None else None
        out.append({
            "check": g["check"], "about": spec.description if spec else "", "passed": bool(g["passed"]),
            "value": g.get("value"), "interval": interval, "n": g.get("n"), "threshold": g.get("threshold"),
            "mde": g.get("mde"), "rule": g.get("rule") or g.get("detail") or "",
        })
    return out


def version_view(v: dict, current_policy: str | None) -> dict:
    data = v["input_data"]
    return {
        **v,
        "short": v["id"][:12],
        "gating": gating(v),
        "verdict": "accepted" if v["decision"].get("accepted") else "rejected",
        "scores": score_table(v["evaluation"]),
        "gate_rows": gate_rows(v["gates"]),
        "failed": [g["check"] for g in v["gates"] if not g["passed"]],
        "trigger": data,
        "policy_is_current": v["approver"].get("policy") is not None and v["approver"]["policy"] == current_policy,
    }


def failures(versions: list[dict]) -> list[dict]:
    return [{"version": v, "gate": g} for v in versions for g in v["gate_rows"] if not g["passed"]]


def report_view(report: dict) -> dict:
    versions = [version_view(v, report["policy"]["current"]) for v in report["versions"]]
    return {
        "r": report,
        "versions": versions,
        "on_path": [v for v in versions if v["on_path"]],
        "rejected": [v for v in versions if not v["on_path"]],
        "ungated": [v for v in versions if v["gating"] == "ungated"],
        "failures": failures(versions),
        "policy": report["policy"],
    }


# --- rendering --------------------------------------------------------------------------------

def render_html(report: dict) -> str:
    """One standalone html file: tables, the lineage as SVG, and the drift plot inline."""
    from .figures import drift_png, lineage_figure

    png = drift_png(report)
    figure = lineage_figure(report)
    return _environment("html").get_template("audit.html.j2").render(
        **report_view(report), lineage=Markup(figure.svg), lineage_note=figure.note,
        drift_src=("data:image/png;base64," + base64.b64encode(png).decode()) if png else None,
    )


def render_markdown(report: dict, *, image: str | None) -> str:
    """Markdown for GitHub: a mermaid lineage, and the drift plot by the relative path ``image``.

    With ``image=None`` (the report printed on stdout) the plot is left out and a line says how to
    get it.
    """
    from urllib.parse import quote

    from .figures import lineage_mermaid

    return _environment("md").get_template("audit.md.j2").render(
        **report_view(report), mermaid=Markup("\n".join(lineage_mermaid(report))),
        image=Markup(quote(image)) if image else None,
    )
