"""`seal diff --behavior`: greedy outputs of two versions on the same prompts, side by side.

    >>> compare_behavior(repo, a_id, b_id, ["What is the capital of Peru?"])   # doctest: +SKIP
    [{'prompt': '...', 'a': '...', 'b': '...', 'same': False}]
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from seal.registry.errors import UserError
from seal.registry.repo import Registry

from .trigger import loads
from seal.registry.worktree import export_adapter as materialize


def read_prompts(path: Path) -> list[str]:
    """Prompts from a text file (one a line) or JSONL of {"prompt"}; names the bad line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompts file {path} does not exist")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            item = loads(line, f"{path} line {number}", 'one {"prompt": "..."} object per line')
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                raise UserError(f"{path} line {number}: expected {{\"prompt\": \"...\"}}")
            prompts.append(item["prompt"])
        else:
            prompts.append(line.strip())
    if not prompts:
        raise UserError(f"{path} holds no prompts")
    return prompts


def compare_behavior(repo: Registry, a: str, b: str | None, prompts: list[str], *,
                     max_new_tokens: int = 64, device: str = "auto") -> list[dict]:
    from .attach import attached
    from .device import pick_device
    from .reflect import answer_prompts
    from .session import loaded_base, set_threads

    base_row = repo.base()
    manifests = {vid: repo.manifest(vid) for vid in (a, b) if vid}
    device = pick_device(device)
    set_threads(device, None)
    base = loaded_base(base_row, device)
    work = Path(tempfile.mkdtemp(prefix="behavior-", dir=repo.tmp_dir))
    try:
        outputs = {}
        for vid in (a, b):
            manifest = manifests.get(vid) if vid else None
            folder = materialize(repo, manifest, vid, work / vid) if manifest and manifest.get("adapter") else None
            with attached(base.model, folder) as model:
                outputs[vid] = answer_prompts(model, base.tokenizer, prompts, max_new_tokens)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [{"prompt": p, "a": x, "b": y, "same": x == y} for p, x, y in zip(prompts, outputs[a], outputs[b])]


def add_behavior(repo: Registry, report: dict, prompts: list[str], *, include_all: bool = False) -> dict:
    """Add to a diff ``report`` (of seal.registry.diff) the greedy outputs of its OLD and NEW
    version on ``prompts``, side by side (``behavior``; unchanged prompts only with
    ``include_all``); a prompt answered differently makes the versions differ."""
    old_id = (report.get("old") or {}).get("id")
    rows = compare_behavior(repo, report["new"]["id"], old_id, prompts)
    # compare_behavior answers (a, b) for the (first, second) version it was given: here (new, old).
    report["behavior"] = [{"prompt": r["prompt"], "old": r["b"], "new": r["a"], "same": r["same"]}
                          for r in rows if include_all or not r["same"]]
    report["differs"] = report["differs"] or any(not r["same"] for r in rows)
    return report
