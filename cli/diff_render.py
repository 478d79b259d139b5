"""The text of `seal diff`: a summary first, then the details; every difference labelled NEW − OLD.

>>> table(["a", "b"], [["x", "1"], ["yy", "22"]], right={1})
['  a    b', '  x    1', '  yy  22']
>>> bar(0.5, 1.0, grew=True, width=8)
'++++'
"""

from __future__ import annotations

from typing import Any

from .render import short, when

#: The widest `--stat` bar, in characters.
STAT_WIDTH = 40


def num(x: Any, signed: bool = False) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        return f"{x:+.6g}" if signed else f"{x:.6g}"
    return str(x)


def value(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, list):
        return ",".join(map(str, x))
    if isinstance(x, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(x.items()))
    return str(x)


def table(header: list[str], rows: list[list[str]], right: set[int] = frozenset(), indent: str = "  ") -> list[str]:
    """Columns padded to their widest cell; ``right`` holds the columns of numbers."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return (indent + "  ".join(parts)).rstrip()

    return [line(header), *map(line, rows)]


def bar(size: float, largest: float, *, grew: bool, width: int = STAT_WIDTH) -> str:
    """A `--stat` bar: length by ``size`` against ``largest``; ``+`` where the update grew, ``-`` where it shrank."""
    n = 0 if largest <= 0 or size <= 0 else max(1, round(width * size / largest))
    return ("+" if grew else "-") * n


def score_name(s: dict) -> str:
    return f"{s['suite']}.{s['metric']}" + (f" vs {s['against']}" if s.get("against") else "")


def side_line(label: str, side: dict | None) -> str:
    if side is None:
        return f"{label:<4} (nothing: the bare base, before the root)"
    return f"{label:<4} {short(side['id'])}  {side['kind']:<11} {when(side['created_at'])}  {side['message']}".rstrip()


def verdict(g: dict | None) -> str:
    return "-" if g is None else ("pass" if g["passed"] else "FAIL")


def gate_cell(g: dict | None) -> str:
    if g is None:
        return "-"
    text = verdict(g)
    if g.get("value") is not None:
        text += f" {num(g['value'])}"
    if g.get("ci_low") is not None and g.get("ci_high") is not None:
        text += f" [{num(g['ci_low'])}, {num(g['ci_high'])}]"
    if g.get("threshold") is not None:
        text += f" (threshold {num(g['threshold'])})"
    return text


# --- the summary ------------------------------------------------------------------------------

def _weights_summary(r: dict) -> str:
    w, s = r["weights"], r["summary"]["weights"]
    if not s["compared"]:
        return f"not compared ({w['skipped']})"
    return (f"{s['modules_changed']} of {s['modules']} modules changed; ‖ΔW_new − ΔW_old‖ = {num(s['diff_norm'])} "
            f"(‖ΔW_old‖ {num(s['norm_old'])}, ‖ΔW_new‖ {num(s['norm_new'])})")


def summary_lines(r: dict) -> list[str]:
    s = r["summary"]
    lines = ["summary", f"  weights  {_weights_summary(r)}"]
    if s["config_changed"]:
        lines.append(f"  config   changed: {', '.join(s['config_changed'])}")
    if s["base_changed"]:
        lines.append("  base     changed")
    for i, row in enumerate(s["scores"]):
        lines.append(f"  {'scores' if i == 0 else '':<8} {score_name(row):<28} {num(row['old'])} → {num(row['new'])}  "
                     f"(difference {num(row['delta'], signed=True)})")
    for i, row in enumerate(s["gates_changed"]):
        old, new = (("-" if v is None else "pass" if v == "pass" else "FAIL") for v in (row["old"], row["new"]))
        lines.append(f"  {'gates' if i == 0 else '':<8} {row['check']:<28} {old} → {new}")
    n_new, n_old = s["versions_only_in_new"], s["versions_only_in_old"]
    if n_new or n_old:
        lines.append(f"  history  {n_new} version(s) only in new, {n_old} only in old")
    return lines


# --- the details ------------------------------------------------------------------------------

def weights_lines(r: dict) -> list[str]:
    w = r["weights"]
    if w["skipped"] or not (w["changed"] or r["all"]):
        return []
    cols = ["‖new − old‖", "‖old‖", "‖new‖", "cosine"]
    keys = ("diff_norm", "norm_old", "norm_new", "cosine")
    lines = ["", "weights per module (‖new − old‖ is the norm of the difference of the two updates ΔW)"]
    lines += table(["module", "layer", *cols],
                   [[m["module"], num(m["layer"]), *(num(m[k]) for k in keys)] for m in w["modules"]],
                   right={1, 2, 3, 4, 5})
    rows = [["-" if layer["layer"] is None else str(layer["layer"]), str(layer["n_modules"]),
             *(num(layer[k]) for k in keys)] for layer in w["layers"]]
    rows.append(["total", str(w["total"]["n_modules"]), *(num(w["total"][k]) for k in keys)])
    return lines + [""] + table(["layer", "modules", *cols], rows, right={1, 2, 3, 4, 5})


def detail_lines(r: dict) -> list[str]:
    lines = weights_lines(r)
    if r["config"]:
        lines += ["", "config"] + table(["field", "old", "new"],
                                        [[c["field"], value(c["old"]), value(c["new"])] for c in r["config"]])
    base = r["base"]
    if base["changed"] or r["all"]:
        lines += ["", "base"] + table(["", "id", "name"], [
            [label, short(side["id"]) if side else "-", (side or {}).get("name") or "-"]
            for label, side in (("old", base["old"]), ("new", base["new"]))])
    if r["scores"]:
        lines += ["", "scores (difference = new − old)"] + table(
            ["score", "old", "new", "difference", "n old", "n new"],
            [[score_name(s), num(s["old"]), num(s["new"]), num(s["delta"], signed=True), num(s["n_old"]),
              num(s["n_new"])] for s in r["scores"]],
            right={1, 2, 3, 4, 5})
    if r["gates"]:
        lines += ["", "gates" + ("" if r["all"] else " (verdict changed)")]
        lines += table(["check", "old", "new"], [[g["check"], gate_cell(g["old"]), gate_cell(g["new"])] for g in r["gates"]])
    return lines + data_lines(r["data"])


def data_lines(data: dict) -> list[str]:
    if not data["versions"]:
        return []
    lines = ["", f"data (OLD...NEW: + {data['only_in_new']} version(s) only in new, - {data['only_in_old']} only in old"
                 + (f"; the {data['limit']} newest of each side are listed" if max(data['only_in_new'], data['only_in_old']) > data['limit'] else "")
                 + ")"]
    for d in data["versions"]:
        mark = "+" if d["side"] == "new" else "-"
        lines.append(f"  {mark} {short(d['id'])}  {d['kind']:<11} {d['status']:<8} {when(d['created_at'])}  {d['message']}".rstrip())
        for label, blob in (("trigger", d["trigger"]), ("self-edit", d["self_edit"])):
            if blob is None:
                continue
            note = "  (missing from the object store)" if blob.get("missing") else ""
            lines.append(f"      {label:<10} {blob['digest']}{note}")
            lines += [f"      {'':<10} | {text}" for text in blob["lines"]]
    return lines


def behavior_lines(rows: list[dict] | None) -> list[str]:
    if not rows:
        return []
    lines = ["", f"behavior ({len(rows)} prompt(s) shown; greedy)"]
    for r in rows:
        lines += [f"  prompt  {r['prompt']}", f"    old   {r['old']!r}", f"    new   {r['new']!r}"]
    return lines


def diff_lines(r: dict) -> list[str]:
    """The text form of :func:`seal.registry.diff.diff_versions`'s report: summary, then details."""
    lines = [side_line("old", r["old"]), side_line("new", r["new"]), ""]
    return lines + summary_lines(r) + detail_lines(r) + behavior_lines(r.get("behavior"))


def stat_lines(r: dict) -> list[str]:
    """`--stat`: one line per changed module with a bar, then the totals, like `git diff --stat`."""
    w, s = r["weights"], r["summary"]["weights"]
    if not s["compared"]:
        return [f" weights not compared ({w['skipped']})"]
    rows = [m for m in w["modules"] if m["diff_norm"] > 0.0 or r["all"]]
    if not rows:
        return []
    width = max(len(m["module"]) for m in rows)
    largest = max(m["diff_norm"] for m in rows)
    numbers = [num(m["diff_norm"]) for m in rows]
    nw = max(map(len, numbers))
    lines = [f" {m['module']:<{width}} | {n:>{nw}} {bar(m['diff_norm'], largest, grew=(m['norm_new'] or 0) >= (m['norm_old'] or 0))}".rstrip()
             for m, n in zip(rows, numbers)]
    lines.append(f" {s['modules_changed']} of {s['modules']} modules changed, ‖ΔW_new − ΔW_old‖ = {num(s['diff_norm'])}"
                 " (+ the update grew, - it shrank)")
    return lines
