"""Calibration of the taught-retention gate (``taught_vs_parent``) on a recorded stream.

Reads the lineage an acceptance run left (``bench/acceptance.py --workdir``) and the placebos it
cached (``SEAL_CACHE``), and for every probed candidate measures, against its parent, the
answer-margin drop on the questions its parent's line was taught
(:func:`seal.editor.taught.taught_questions`), and the same for the parent's placebo edit: the
null edit, the same recipe on an unrelated passage. Prints one JSON line: for each threshold,
how many placebos the gate would reject (its false-reject rate on null edits) and how many
candidates::

    SEAL_CACHE=/tmp/c10 python bench/taught_calibration.py /tmp/seal-acc10 --threads 1 --out rows.jsonl

Only reads the registry; the placebos are copied out of the cache before use.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

THRESHOLDS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


def probed(manifest: dict) -> bool:
    return manifest.get("kind") == "edit" and any(a.get("check") == "retention_vs_parent"
                                                 for a in manifest.get("audit") or [])


def placebo_key(reg, manifest: dict) -> str | None:
    digest = (manifest.get("efficacy") or {}).get("margins")
    if not digest:
        return None
    placebo = json.loads(reg.store.get(digest)).get("placebo") or {}
    return placebo.get("key")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="also write one JSON line per measured edit here")
    ap.add_argument("--bad", type=int, default=0, help="also train this many known-bad edits (lr x10, no anchor)")
    ap.add_argument("--only-bad", action="store_true", help="with --rows: skip the measured edits, read them from --rows")
    ap.add_argument("--rows", type=Path, help="the per-edit lines of an earlier run (with --only-bad)")
    args = ap.parse_args(argv)

    import torch

    from seal.editor.attach import attached
    from seal.editor.base import default_cache_dir, load_base
    from seal.editor.efficacy import answer_margins
    from seal.editor.placebo import placebo_cache_dir
    from seal.editor.taught import taught_decision, taught_questions
    from seal.registry import Registry
    from seal.registry.worktree import export_adapter

    torch.set_num_threads(args.threads)
    reg = Registry.open(args.workdir, read_only=True)
    base = load_base(None, cache_dir=default_cache_dir(), device="cpu")
    work = Path(tempfile.mkdtemp(prefix="seal-taught-"))
    edits = [m for m in reg.edits_between() if probed(m)]
    folders: dict[str, Path] = {}
    margins: dict[tuple[str, str], list[float]] = {}

    def folder_of(vid: str) -> Path | None:
        if vid not in folders:
            manifest = reg.manifest(vid)
            folders[vid] = export_adapter(reg, manifest, vid, work / vid[:16]) if manifest.get("adapter") else None
        return folders[vid]

    def measure(key: str, folder: Path | None, taught) -> list[float]:
        if (key, taught.digest) not in margins:
            with attached(base.model, folder, merge=True) as model:
                margins[(key, taught.digest)] = answer_margins(model, base.tokenizer, list(taught.questions))[0]
        return margins[(key, taught.digest)]

    rows, seen_placebos, t0 = [], set(), time.perf_counter()
    if args.only_bad:
        rows, edits = [json.loads(line) for line in args.rows.read_text().splitlines()], []
    for m in edits:
        parent = m["parents"][0]
        taught = taught_questions(reg, parent)
        if not taught.questions:
            continue
        p = measure(parent, folder_of(parent), taught)
        c = measure(m["id"], folder_of(m["id"]), taught)
        row = {"id": m["id"][:12], "status": m["status"], "parent": parent[:12], "n": len(p),
               "candidate": taught_decision(c, p, 1.0).audit_entry()}
        key = placebo_key(reg, m)
        if key and key not in seen_placebos and (placebo_cache_dir(key) / "placebo.json").exists():
            seen_placebos.add(key)
            row["placebo"] = taught_decision(measure(key, placebo_cache_dir(key), taught), p, 1.0).audit_entry()
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.out:
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
    summary = summarize(rows, time.perf_counter() - t0)
    if args.bad:
        summary["known_bad"] = known_bad(reg, base, work, rows, args, measure, folder_of)
    print(json.dumps(summary))
    return 0


def known_bad(reg, base, work: Path, rows: list[dict], args, measure, folder_of) -> dict:
    """Edits the gate must catch: from each of the last ``--bad`` parents with enough taught
    passages, the placebo's text trained ten times as hard (lr 3e-3, 5 epochs) and without the
    KL anchor. Their verdicts at the default threshold."""
    from seal.editor.placebo import placebo_sequences
    from seal.editor.taught import TAUGHT_MIN, taught_decision, taught_questions
    from seal.editor.train import train_adapter
    from seal.editor.gates import DEFAULT_POLICY

    threshold = DEFAULT_POLICY["taught_margin_drop_vs_parent_max"]
    # the rows name each edit's parent by its 12-digit prefix, in the stream's order
    parents = [reg.resolve(p) for p in dict.fromkeys(r["parent"] for r in rows if r["n"] >= TAUGHT_MIN)][-args.bad:]
    out = []
    for parent in parents:
        taught = taught_questions(reg, parent)
        folder = work / f"bad-{parent[:12]}"
        train_adapter(base.model, base.tokenizer, placebo_sequences(256, 16), out_dir=folder,
                      parent_adapter_dir=folder_of(parent), lr=3e-3, epochs=5, seed=0)
        p, c = measure(parent, folder_of(parent), taught), measure(f"bad-{parent}", folder, taught)
        entry = taught_decision(c, p, threshold).audit_entry()
        out.append({"parent": parent[:12], "n": entry["n"], "drop": entry["value"], "bound": entry["ci_high"],
                    "rejected": not entry["passed"]})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return {"threshold": threshold, "edits": len(out), "rejected": sum(r["rejected"] for r in out), "rows": out}


def summarize(rows: list[dict], seconds: float) -> dict:
    """Rejections at each threshold among the edits the gate judges (>= TAUGHT_MIN taught passages)."""
    from seal.editor.taught import TAUGHT_MIN

    judged = [r for r in rows if r["n"] >= TAUGHT_MIN]

    def bounds(kind: str, status: str | None = None) -> list[float]:
        return [r[kind]["ci_high"] for r in judged if kind in r and (status is None or r["status"] == status)]

    placebos, cands, accepted = bounds("placebo"), bounds("candidate"), bounds("candidate", "accepted")
    return {"bench": "taught_calibration", "edits": len(rows), "judged": len(judged), "placebos": len(placebos),
            "median_n": statistics.median(r["n"] for r in rows) if rows else 0,
            "median_drop": {k: statistics.median(r[k]["value"] for r in rows if k in r) if rows else None
                            for k in ("candidate", "placebo")},
            "rejected": {str(t): {"placebos": sum(b > t for b in placebos), "candidates": sum(b > t for b in cands),
                                  "accepted_edits": sum(b > t for b in accepted)} for t in THRESHOLDS},
            "seconds": round(seconds, 1)}


if __name__ == "__main__":
    sys.exit(main())
