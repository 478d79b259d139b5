"""`seal diff` and `seal revert`: parse, call the registry, render. No model is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .app import JsonOpt, command, open_registry
from .render import emit, print_json, short, when


@command()
def diff(
    a: str = typer.Argument(..., help="The version to look at."),
    b: Optional[str] = typer.Argument(None, help="The version to compare with (default: A's first parent)."),
    json_: bool = JsonOpt,
    exit_code: bool = typer.Option(False, "--exit-code", help="Exit 1 when A and B differ, 0 when not."),
    all_: bool = typer.Option(False, "--all", help="Show unchanged modules, config fields, scores, gates and versions too."),
    behavior: Optional[Path] = typer.Option(None, "--behavior", help="Prompts file (lines or JSONL {prompt}): greedy outputs of A and B side by side (loads the model)."),
) -> None:
    """What changed from B to A: weights per module, adapter config, base, scores, gates, data.

    Weight figures are Frobenius norms of the LoRA updates ΔW = scale·B@A, computed in rank space:
    diff_norm = ‖ΔW_A − ΔW_B‖, and each score's delta is A − B.
    """
    from seal.registry.diff import diff_versions

    repo = open_registry()
    if behavior is not None:
        from seal.editor.behavior import read_prompts

        prompts = read_prompts(behavior)  # checked before anything is computed
    report = diff_versions(repo, a, b, include_all=all_)
    if behavior is not None:
        from seal.editor.behavior import compare_behavior

        rows = compare_behavior(repo, report["a"]["id"], (report.get("b") or {}).get("id"), prompts)
        report["behavior"] = [r for r in rows if all_ or not r["same"]]
        report["differs"] = report["differs"] or any(not r["same"] for r in rows)
    if json_:
        print_json(report)
    elif report["differs"] or all_:
        emit(diff_lines(report) + behavior_lines(report.get("behavior")))
    if exit_code and report["differs"]:
        raise typer.Exit(1)


@command()
def revert(
    rev: str = typer.Argument(..., help="The version to undo (an ancestor of HEAD)."),
    to: Optional[str] = typer.Option(None, "--to", help="Go back to this ancestor of REV instead of REV's first parent."),
    message: str = typer.Option("", "-m", "--message", help="Why (kept in the message, the record and the reflog)."),
    json_: bool = JsonOpt,
) -> None:
    """Undo a version: a new version on the current branch with the adapter from before it.

    History is never rewritten: the reverted version stays, and the new one records what it undid and why.
    """
    from seal.registry.porcelain import revert as do_revert

    out = do_revert(open_registry(), rev, to=to, message=message)
    if json_:
        print_json(out)
        return
    restored = f"adapter {out['adapter']}" if out["adapter"] else "no adapter (the bare base model)"
    emit([
        f"[{out['ref']} {short(out['id'])}] {out['message']}",
        f"restored {restored} from {short(out['to'])}",
    ])


# --- text rendering ---------------------------------------------------------------------------

def behavior_lines(rows: list[dict] | None) -> list[str]:
    if not rows:
        return []
    lines = ["", f"behavior ({len(rows)} prompt(s) shown; greedy)"]
    for r in rows:
        lines += [f"  prompt  {r['prompt']}", f"    A     {r['a']!r}", f"    B     {r['b']!r}"]
    return lines


def _num(x: Any, signed: bool = False) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        return f"{x:+.6g}" if signed else f"{x:.6g}"
    return str(x)


def _value(x: Any) -> str:
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


def _side_line(label: str, side: dict | None) -> str:
    if side is None:
        return f"     {label} (nothing: A is the root)"
    return f"     {label} {short(side['id'])}  {side['kind']:<11} {when(side['created_at'])}  {side['message']}".rstrip()


def _gate_cell(g: dict | None) -> str:
    if g is None:
        return "-"
    text = "pass" if g["passed"] else "FAIL"
    if g.get("value") is not None:
        text += f" {_num(float(g['value']))}"
    if g.get("threshold") is not None:
        text += f" (threshold {_num(float(g['threshold']))})"
    return text


def diff_lines(r: dict) -> list[str]:
    """The text form of :func:`seal.registry.diff.diff_versions`'s report."""
    lines = ["diff" + _side_line("A", r["a"])[4:], _side_line("B", r["b"])]
    w = r["weights"]
    if w["skipped"]:
        if w["changed"] or r["all"]:
            lines += ["", f"weights: not compared ({w['skipped']})"]
    elif w["changed"] or r["all"]:
        total = w["total"]
        lines += ["", f"weights: {w['n_changed']} of {total['n_modules']} modules changed "
                      "(diff_norm = ‖ΔW_A − ΔW_B‖_F, PEFT scaling)"]
        cols = ["diff_norm", "norm_A", "norm_B", "cosine"]
        lines += table(
            ["module", "layer", *cols],
            [[m["module"], _num(m["layer"]), *(_num(m[k]) for k in ("diff_norm", "norm_a", "norm_b", "cosine"))]
             for m in w["modules"]],
            right={1, 2, 3, 4, 5},
        )
        lines.append("")
        rows = [[("-" if layer["layer"] is None else str(layer["layer"])), str(layer["n_modules"]),
                 *(_num(layer[k]) for k in ("diff_norm", "norm_a", "norm_b", "cosine"))] for layer in w["layers"]]
        rows.append(["total", str(total["n_modules"]),
                     *(_num(total[k]) for k in ("diff_norm", "norm_a", "norm_b", "cosine"))])
        lines += table(["layer", "modules", *cols], rows, right={1, 2, 3, 4, 5})
    if r["config"]:
        lines += ["", "config"]
        lines += table(["field", "A", "B"], [[c["field"], _value(c["a"]), _value(c["b"])] for c in r["config"]])
    base = r["base"]
    if base["changed"] or r["all"]:
        lines += ["", "base"]
        lines += table(["", "id", "name"], [
            [label, short(side["id"]) if side else "-", (side or {}).get("name") or "-"]
            for label, side in (("A", base["a"]), ("B", base["b"]))
        ])
    if r["scores"]:
        lines += ["", "scores (delta = A − B)"]
        lines += table(
            ["score", "A", "B", "delta", "n_A", "n_B"],
            [[f"{s['suite']}.{s['metric']}" + (f" vs {s['against']}" if s.get("against") else ""),
              _num(s["a"]), _num(s["b"]), _num(s["delta"], signed=True), _num(s["n_a"]), _num(s["n_b"])]
             for s in r["scores"]],
            right={1, 2, 3, 4, 5},
        )
    if r["gates"]:
        lines += ["", "gates" + ("" if r["all"] else " (verdict changed)")]
        lines += table(["check", "A", "B"], [[g["check"], _gate_cell(g["a"]), _gate_cell(g["b"])] for g in r["gates"]])
    if r["data"]:
        n_a = sum(1 for d in r["data"] if d["side"] == "a")
        lines += ["", f"data (A...B: {n_a} version(s) only in A, {len(r['data']) - n_a} only in B)"]
        for d in r["data"]:
            lines.append(f"  {d['side'].upper()} {short(d['id'])}  {d['kind']:<11} {when(d['created_at'])}  {d['message']}".rstrip())
            for label, blob in (("trigger", d["trigger"]), ("self-edit", d["self_edit"])):
                if blob is None:
                    continue
                note = "  (missing from the object store)" if blob.get("missing") else ""
                lines.append(f"      {label:<10} {blob['digest']}{note}")
                lines += [f"      {'':<10} | {text}" for text in blob["lines"]]
    return lines
