"""Rendering for the terminal: plain text on stdout, rich colour only when it is a terminal."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def short(vid: str | None, n: int = 12) -> str:
    if vid and vid.startswith("ref: "):
        return vid[5:].removeprefix("refs/heads/")
    return vid[:n] if vid else "-"


def when(ts: str) -> str:
    return ts.replace("T", " ")[:19] if ts else ""


def headline(item: dict) -> str:
    h = item.get("headline")
    if not h or h.get("value") is None:
        return ""
    return f"{h['metric']}={h['value']:.3f}"


def log_line(item: dict, prefix: str = "") -> str:
    refs = f" ({', '.join(item['refs'])})" if item.get("refs") else ""
    score = headline(item)
    status = item["status"] if item["status"] == "accepted" else item["status"].upper()
    parts = [
        f"{prefix}{short(item['id'])}{refs}",
        f"{item['kind']:<11}",
        f"{status:<8}",
        when(item["created_at"]),
        score,
        item["message"],
    ]
    return "  ".join(p for p in parts if p)


def emit(lines: list[str]) -> None:
    out = sys.stdout
    if out.isatty():
        from rich.console import Console
        from rich.markup import escape

        console = Console(highlight=False)
        for line in lines:
            console.print(escape(line))
    else:
        out.write("\n".join(lines) + ("\n" if lines else ""))
