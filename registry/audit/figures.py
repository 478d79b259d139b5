"""The audit's pictures: the drift plot (PNG), and the lineage as SVG (graphviz) or mermaid (GitHub).

The lineage is laid out by graphviz's ``dot`` (Debian's ``graphviz`` package), which routes edges
around nodes; where ``dot`` is missing or fails, the lanes of `seal log --graph` are drawn
instead, and the report says so. Markdown gets a mermaid block, which GitHub renders itself.

>>> dot_string('say "hi" \\\\N')
'"say \\\\"hi\\\\" \\\\\\\\N"'
>>> mermaid_text('<b>"x"</b> & [y]')
'b x /b y'
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from dataclasses import dataclass

from ..store.graph import graph_lines

#: Fill and outline of a node by what it is; FAIL red is kept for failed gates alone.
NODE_STYLE = {
    "root": ("#eceff1", "#7f8c8d"),
    "accepted": ("#d5f5e3", "#1e8449"),
    "rejected": ("#fadbd8", "#c0392b"),
    "ungated": ("#fdebd0", "#b9770e"),
}
#: Seconds `dot` may take before the lanes layout is used instead.
DOT_TIMEOUT = 60
#: GitHub renders mermaid graphs up to a size; larger lineages show their newest versions.
MERMAID_NODES = 300
#: The html lineage draws at most this many versions (the newest): more make an unreadable picture.
GRAPH_NODES = 400


@dataclass(frozen=True)
class LineageFigure:
    svg: str
    layout: str            # "graphviz" or "lanes"
    note: str | None       # why the lanes layout was used


def _newest_first(report: dict) -> list[dict]:
    return sorted(report["versions"], key=lambda v: (v["timestamp"], v["id"]), reverse=True)


def gating(v: dict) -> str:
    """What stood between a version and its branch: "gated", "ungated", or its kind (root, revert)."""
    if v["kind"] in ("root", "revert"):
        return v["kind"]
    return "gated" if v.get("gated") else "ungated"


def node_style(v: dict) -> tuple[str, str]:
    if v["kind"] == "root":
        return NODE_STYLE["root"]
    if v["status"] == "accepted" and gating(v) == "ungated":
        return NODE_STYLE["ungated"]
    return NODE_STYLE.get(v["status"], NODE_STYLE["root"])


def _label(v: dict) -> str:
    gated = " · ungated" if gating(v) == "ungated" else ""
    message = (v.get("message") or "").strip().splitlines()
    text = message[0] if message else ""
    return f"{v['id'][:10]} · {v['kind']}\n{v['status']}{gated}\n{text[:36] + ('…' if len(text) > 36 else '')}"


# --- graphviz ---------------------------------------------------------------------------------

def dot_string(text: str) -> str:
    """A DOT quoted string; backslashes doubled so that dot's own escapes (\\N, \\l) stay literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def lineage_dot(report: dict) -> str:
    """The lineage in graphviz's DOT language: parents below, children above (newest on top)."""
    known = {v["id"] for v in report["versions"]}
    lines = [
        "digraph lineage {",
        '  graph [rankdir=BT, nodesep=0.3, ranksep=0.35, bgcolor="transparent"];',
        '  node [shape=box, style=filled, fontname="DejaVu Sans Mono", fontsize=10, margin="0.10,0.05", penwidth=1.4];',
        '  edge [color="#7f8c8d", arrowsize=0.6];',
    ]
    for v in _newest_first(report):
        fill, line = node_style(v)
        style = "filled,dashed" if v["status"] == "rejected" else "filled"
        lines.append(f'  "{v["id"]}" [label={dot_string(_label(v))}, fillcolor="{fill}", color="{line}", '
                     f'style="{style}", tooltip="{v["id"]}", id="graph_{v["id"][:12]}", href="#v-{v["id"][:12]}"];')
    for v in report["versions"]:
        for p in v["parents"]:
            if p in known:
                lines.append(f'  "{p}" -> "{v["id"]}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_svg(source: str) -> str:
    dot = shutil.which("dot")
    if dot is None:
        raise FileNotFoundError("graphviz `dot` is not installed")
    proc = subprocess.run([dot, "-Tsvg"], input=source.encode("utf-8"), capture_output=True, timeout=DOT_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode("utf-8", "replace").strip()[:200] or f"dot exited {proc.returncode}")
    svg = proc.stdout.decode("utf-8")
    start = svg.find("<svg")
    if start < 0:
        raise RuntimeError("dot printed no <svg>")
    return svg[start:]  # drop the XML declaration and DOCTYPE: the SVG sits inside an HTML page


def lineage_figure(report: dict, limit: int = GRAPH_NODES) -> LineageFigure:
    """The lineage laid out by graphviz, or by lanes (with a note saying why) when dot is unavailable."""
    shown = _newest_first(report)[:limit]
    part = {**report, "versions": shown}
    cut = f"The {len(shown)} newest of {len(report['versions'])} versions are drawn. " \
        if len(shown) < len(report["versions"]) else ""
    try:
        return LineageFigure(_dot_svg(lineage_dot(part)), "graphviz", cut or None)
    except FileNotFoundError:
        why = "graphviz is not installed (Debian: apt-get install graphviz), so edges may cross versions"
    except (RuntimeError, subprocess.TimeoutExpired, OSError, UnicodeDecodeError) as e:
        why = f"graphviz failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}), so edges may cross versions"
    return LineageFigure(lanes_svg(part), "lanes", f"{cut}Drawn in lanes, as seal log --graph draws them: {why}.")


# --- lanes (the fallback) ---------------------------------------------------------------------

def _lanes(report: dict) -> tuple[list[dict], dict[str, int], dict[str, int]]:
    items = [{"id": v["id"], "parents": list(v["parents"]), "v": v} for v in _newest_first(report)]
    known = {i["id"] for i in items}
    for i in items:
        i["parents"] = [p for p in i["parents"] if p in known]
    lane_of: dict[str, int] = {}
    row_of: dict[str, int] = {}
    for prefix, item in graph_lines(items):
        if item is not None:
            lane_of[item["id"]] = prefix.index("*") // 2
            row_of[item["id"]] = len(row_of)
    return items, lane_of, row_of


def lanes_svg(report: dict) -> str:
    """One row per version, newest on top, in the lanes of `seal log --graph` (edges may cross nodes)."""
    from html import escape

    items, lane_of, row_of = _lanes(report)
    dx, dy, x0, y0 = 26, 34, 20, 24
    text_x = x0 + dx * (max(lane_of.values(), default=0) + 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{text_x + 560}" height="{y0 + dy * max(len(row_of), 1) + 10}" '
           f'font-family="monospace" font-size="12">']
    pos = {vid: (x0 + dx * lane_of[vid], y0 + dy * row_of[vid]) for vid in lane_of}
    for i in items:
        x1, y1 = pos[i["id"]]
        for p in i["parents"]:
            x2, y2 = pos[p]
            out.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#888" stroke-width="2"/>')
    for i in items:
        v = i["v"]
        x, y = pos[i["id"]]
        fill, line = node_style(v)
        out.append(f'<circle id="graph_{v["id"][:12]}" cx="{x}" cy="{y}" r="7" fill="{line}"><title>{escape(v["id"])}</title></circle>')
        label = escape(_label(v).replace("\n", "  "))
        out.append(f'<text x="{text_x}" y="{y + 4}" fill="{line}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out)


# --- mermaid (Markdown on GitHub) -------------------------------------------------------------

def mermaid_text(text: str) -> str:
    """Text mermaid shows as it is: letters, digits and plain punctuation; anything else a space."""
    kept = "".join(c if c.isalnum() or c in " .,:;!?()'+=/_-·…" else " " for c in text)
    return re.sub(r"\s+", " ", kept).strip()


def lineage_mermaid(report: dict, limit: int = MERMAID_NODES) -> list[str]:
    """A mermaid flowchart of the lineage (newest ``limit`` versions), as Markdown lines with the fence."""
    shown = _newest_first(report)[:limit]
    names = {v["id"]: f"v{i}" for i, v in enumerate(shown)}
    lines = []
    if len(shown) < len(report["versions"]):
        lines += [f"The {len(shown)} newest of {len(report['versions'])} versions are drawn.", ""]
    lines += ["```mermaid", "flowchart BT"]
    for v in shown:
        label = "<br/>".join(mermaid_text(part) for part in _label(v).split("\n") if mermaid_text(part))
        kind = "root" if v["kind"] == "root" else "ungated" if node_style(v) == NODE_STYLE["ungated"] else v["status"]
        lines.append(f'  {names[v["id"]]}["{label}"]:::{kind if kind in NODE_STYLE else "root"}')
    for v in shown:
        for p in v["parents"]:
            if p in names:
                lines.append(f"  {names[p]} --> {names[v['id']]}")
    for kind, (fill, line) in NODE_STYLE.items():
        dash = ",stroke-dasharray: 4 3" if kind == "rejected" else ""
        lines.append(f"  classDef {kind} fill:{fill},stroke:{line},color:#222{dash}")
    return lines + ["```"]


# --- drift ------------------------------------------------------------------------------------

def drift_png(report: dict) -> bytes | None:
    """The drift series as a PNG: KL to the base, retention, and ‖ΔW‖ from the base."""
    series = report["drift"]
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(len(series)))
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
    # At most ~16 labelled ticks: more are unreadable, and each costs matplotlib layout time.
    shown = xs[::max(1, -(-len(xs) // 16))]
    axes[-1].set_xticks(shown)
    axes[-1].set_xticklabels([series[x]["id"][:7] for x in shown], rotation=45, fontsize=7)
    axes[0].set_title(f"drift along the lineage to {report['subject'][:12]}")
    # Fixed margins instead of tight_layout(), which measured every tick label again (seconds at 50 versions).
    fig.subplots_adjust(left=0.1, right=0.98, top=0.95, bottom=0.1, hspace=0.12)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": "seal audit"})  # marks a file seal may replace
    plt.close(fig)
    return buf.getvalue()
