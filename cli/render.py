"""Rendering for the terminal: plain text on stdout, rich colour only when it is a terminal.

Values are shown as values and differences as differences: ``0.600 (parent 0.550, +0.050)``,
never a reference value under a label that reads like a delta.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from seal.registry.vocabulary import group_scores


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str, ensure_ascii=False) + "\n")


def short(vid: str | None, n: int = 12) -> str:
    if vid and vid.startswith("ref: "):
        return vid[5:].removeprefix("refs/heads/")
    return vid[:n] if vid else "-"


def when(ts: str) -> str:
    return ts.replace("T", " ")[:19] if ts else ""


def num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:.{digits}f}"


def signed(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:+.{digits}f}"


def headline(item: dict) -> str:
    h = item.get("headline")
    if not h or h.get("value") is None:
        return ""
    return f"{h['metric']}={h['value']:.3f}"


def log_line(item: dict, prefix: str = "") -> str:
    refs = f" ({', '.join(item['refs'])})" if item.get("refs") else ""
    status = item["status"] if item["status"] == "accepted" else item["status"].upper()
    parts = [f"{prefix}{short(item['id'])}{refs}", f"{item['kind']:<11}", f"{status:<8}", when(item["created_at"]),
             headline(item), _writer(item), first_line(item["message"])]
    return "  ".join(p for p in parts if p)


def _writer(item: dict) -> str:
    if not item.get("writer"):
        return ""
    from seal.editor.writer import writer_label  # torch-free

    return f"[{writer_label(item['writer'])}]"


def first_line(text: str) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def score_lines(scores: list[dict]) -> list[str]:
    """One line per (suite, metric): the version's value, then each reference with the difference."""
    lines = []
    for group in group_scores(scores):
        suite, metric, own, n = group.suite, group.metric, group.own, group.n
        text = f"  {suite}.{metric:<22} {num(own['value']) if own else '-':>8}"
        refs = [f"{who} {num(r['value'])}" + (f", {signed(own['value'] - r['value'])}" if own else "")
                for who, r in group.refs.items()]
        if refs:
            text += "  (" + "; ".join(refs) + ")"
        if n is not None:
            text += f"  n={n}"
        lines.append(text)
    return lines


def gate_lines(audit: list[dict]) -> list[str]:
    lines = []
    for a in audit:
        verdict = "pass" if a["passed"] else "FAIL"
        value = "" if a.get("value") is None else f" {num(a['value'])}"
        ci = f" [{num(a['ci_low'])}, {num(a['ci_high'])}]" if a.get("ci_low") is not None else ""
        thr = "" if a.get("threshold") is None else f" (threshold {a['threshold']:g})"
        lines.append(f"  {verdict}  {a['check']}{value}{ci}{thr}  {a.get('rule') or a.get('detail', '')}".rstrip())
    return lines


def decision_lines(result: dict) -> list[str]:
    """An attempt's result (edit, merge, consolidate, gated import): one line per candidate, then the decision."""
    lines = []
    for c in result["candidates"]:
        failed = ", ".join(c.get("failed_gates") or [])
        why = f"  diverged: {c['diverged']}" if c.get("diverged") else (f"  failed: {failed}" if failed else "")
        lines.append(f"{c['status']:<9} {short(c['id'])}{why}")
    d = result["decision"]
    if d["accepted"]:
        lines.append(f"accepted {short(d['id'])}" + (f"; {d['ref']} moved" if d.get("ref") else "; no branch moved"))
    else:
        lines.append(f"rejected: {d['reason']}")
    return lines


def decision_line(decision: dict) -> str:
    if decision.get("gated") is False:
        return "decision  accepted without gates (ungated)"
    verdict = "accepted" if decision.get("accepted") else "rejected"
    extra = f" (candidate {decision['candidate'] + 1} of {decision['of']})" if "candidate" in decision else ""
    return f"decision  {verdict}{extra}: {decision.get('reason', '')}".rstrip(": ")


def show_lines(r: dict) -> list[str]:
    lines = [
        f"version   {r['id']}" + (f"  ({', '.join(r['refs'])})" if r.get("refs") else ""),
        f"kind      {r['kind']}    status {r['status']}",
        f"parents   {', '.join(r['parents']) or '(none: root)'}",
        f"base      {r['base']}",
        f"author    {r.get('author') or '-'}",
        f"date      {when(r['created_at'])}",
        f"signed    {short(r.get('signer'))}" if r.get("signature") else "signed    NO",
        "",
        *[f"    {line}" for line in (r.get("message") or "").splitlines()],
        "",
    ]
    adapter = r.get("adapter")
    if adapter:
        cfg = adapter.get("config", {})
        lines.append(f"adapter   {adapter['weights']}  r={cfg.get('r')} alpha={cfg.get('lora_alpha')} "
                     f"targets={cfg.get('target_modules')}")
    for key in ("trigger", "self_edit", "policy", "eval"):
        if r.get(key):
            lines.append(f"{key:<9} {r[key]}")
    lines += _train_lines(r.get("train") or {})
    if r.get("scores"):
        lines += ["scores"] + score_lines(r["scores"])
    if r.get("audit"):
        lines += ["gates"] + gate_lines(r["audit"])
    if r.get("decision"):
        lines.append(decision_line(r["decision"]))
    if r.get("revert"):
        rv = r["revert"]
        lines.append(f"reverts   {short(rv['of'])} back to {short(rv['to'])}; scores as measured on {short(rv.get('scores_from'))}")
    return lines


def _train_lines(train: dict) -> list[str]:
    if not train:
        return []
    keys = ("source", "device", "gpu", "epochs", "lr", "steps", "loss_final", "seconds")
    shown = "  ".join(f"{k}={train[k]}" for k in keys if train.get(k) is not None)
    lines = [f"train     {shown}"] if shown else []
    timings = train.get("timings")
    if isinstance(timings, dict) and timings:
        lines.append("timings   " + "  ".join(f"{k}={v}" for k, v in timings.items()))
    if train.get("mlflow_run_id"):
        lines.append(f"mlflow    run {train['mlflow_run_id']}")
    return lines


def printable(text: str) -> str:
    r"""``text`` with control and bidirectional characters shown escaped, so a stored string can
    never drive the terminal.

    >>> print(printable("ok\x1b[2Jgone"))
    ok\x1b[2Jgone
    """
    from seal.registry.store.objects import UNSAFE_CHARS

    return UNSAFE_CHARS.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def emit(lines: list[str]) -> None:
    lines = [printable(str(line)) for line in lines]
    out = sys.stdout
    if out.isatty():
        from rich.console import Console
        from rich.markup import escape

        console = Console(highlight=False, soft_wrap=True)
        for line in lines:
            console.print(escape(line))
    else:
        out.write("\n".join(lines) + ("\n" if lines else ""))
