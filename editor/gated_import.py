"""`seal import --gate`: an adapter trained elsewhere, scored and gated like an edit.

Without ``--gate`` an import is recorded as ``ungated`` (:mod:`seal.registry.porcelain`). With
it, the adapter is checked against the base first (no model loads for a bad folder), then
measured against HEAD exactly as an edit's candidate is: efficacy on ``--eval`` (or on the eval
sets and passages of HEAD's line), retention, drift, weights, refusal and leakage, through the
policy's gates. It is recorded either way: accepted (the branch moves by compare-and-swap) or
rejected with the failing gates named.

    >>> run_gated_import(reg, Path("their-adapter"), eval_file=Path("qa.jsonl"))   # doctest: +SKIP
    {'decision': {'accepted': True, ...}, 'candidates': [...]}
"""

from __future__ import annotations

import shutil
from pathlib import Path

from seal.registry.adapters import ADAPTER_CONFIG_FILE, WEIGHTS_FILE, read_adapter_folder
from seal.registry.errors import NoHead, UserError
from seal.registry.porcelain import check_message, check_same_base, display_name
from seal.registry.store.objects import canonical_json

from .attempt import measure_parent_attached, open_attempt, run_attempt, single_candidate
from .merge import eval_union
from .options import check_device_name
from .trigger import read_jsonl

LINE_DEPTH = 50  # how far back along HEAD's line eval sets are gathered when --eval is not given


def _spec(reg, head: str, eval_file: Path | None) -> dict:
    if eval_file is not None:
        return {"qa": read_jsonl(eval_file, "eval", ("question", "answer|answers"))[0]}
    line = reg.first_parent_line(head, LINE_DEPTH)
    spec = eval_union(reg, [reg.manifest(v) for v in line])
    if not spec:
        raise UserError("HEAD's line carries no eval set or passage to measure efficacy on; pass --eval FILE.jsonl")
    return spec


def run_gated_import(reg, folder: Path, *, message: str = "", eval_file: Path | None = None, device: str = "auto",
                     require_gpu: bool = False, track: bool = True, answer_tokens: int = 48,
                     threads: int | None = None, progress=None) -> dict:
    """Score and gate an existing PEFT LoRA folder against HEAD, and record it (accepted or rejected)."""
    from .progress import default_progress
    from .session import open_session

    check_message(message)
    check_device_name(device)
    base = reg.base()
    adapter = read_adapter_folder(Path(folder), base_shapes=(base.get("info") or {}).get("shapes"))
    check_same_base(base, adapter.config, str(adapter.path))
    ref, head = reg.head()
    if head is None:
        raise NoHead()
    spec = _spec(reg, head, eval_file)
    progress = progress or default_progress()
    with open_session(reg, device=device, require_gpu=require_gpu, threads=threads, progress=progress,
                      track=track) as session:
        attempt = open_attempt(session, "import", [head], ref=ref, expected=head, spec=spec,
                               message=message or f"import {display_name(adapter.path)} (gated)",
                               title=display_name(adapter.path), answer_tokens=answer_tokens,
                               extra={"eval": reg.store.put(canonical_json(spec))})

        def imported() -> list:
            with progress.stage("measure the parent") as stage:
                measure_parent_attached(session, attempt, stage)
            local = session.work / "imported"
            local.mkdir()
            for name in (ADAPTER_CONFIG_FILE, WEIGHTS_FILE):
                shutil.copyfile(adapter.path / name, local / name)
            return [single_candidate(session, attempt, local, {"source": "import", "gated": True})]

        return run_attempt(session, attempt, imported)
