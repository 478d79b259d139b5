"""The self-edit loop, end to end: encounter, reflect, edit, evaluate, decide, record.

One function, :func:`run_edit`, is the porcelain of `seal edit`. It loads the base once, lets the
model at HEAD write K candidate self-edits in one batched call, trains one LoRA child per
candidate from the parent's adapter, scores every child (efficacy, retention, drift, weights,
refusal, leakage), applies the policy's gates, and records every candidate as a version:
the best one that passes every gate as ``accepted`` (the branch moves to it by
compare-and-swap), the others as ``rejected`` with the failing gates named.

    >>> result = run_edit(repo, EditRequest(passage=Path("passage.json"), candidates=2))  # doctest: +SKIP
    >>> result["decision"]["accepted"], [c["status"] for c in result["candidates"]]          # doctest: +SKIP
    (True, ['accepted', 'rejected'])

Input is checked before any model is loaded; a bad file is a UserError (exit 2) and records
nothing. Triggering data that holds secrets or personal data is rejected before any training
(unless ``allow_pii``): the record keeps each finding's type and position and a redacted copy
of the data, and the secret itself is written nowhere.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from seal.registry import refs as R
from seal.registry.bases import base_spec, get_base
from seal.registry.errors import RefConflict, UserError
from seal.registry.objects import build_manifest, canonical_json, score_value
from seal.registry.graph import parents_of
from seal.registry.policy import read_policy, record_policy
from seal.registry.repo import Registry as Repository, RefMove
from seal.registry.versions import load_manifest
from seal.registry.worktree import export_adapter as materialize

PROBESET_VERSION = "seal-probes/2"  # bump when probe data or decoding changes


# --- request and trigger ----------------------------------------------------------------------

@dataclass
class EditRequest:
    """Everything `seal edit` takes. Defaults, and why, are in the README."""

    passage: Path | None = None
    examples: Path | None = None
    eval: Path | None = None
    candidates: int = 1
    style: str = "implications"
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 256
    r: int = 32
    alpha: int = 64
    target_modules: str = "all-linear"
    lr: float = 3e-4
    epochs: int = 10
    batch_size: int = 1
    seed: int = 0
    device: str = "auto"
    require_gpu: bool = False
    message: str = ""
    allow_pii: bool = False
    track: bool = True
    answer_tokens: int = 48


@dataclass
class Trigger:
    kind: str  # "passage" | "examples"
    raw: bytes
    text: str
    title: str | None = None
    passage: str | None = None
    examples: list[dict] = field(default_factory=list)
    eval_items: list[dict] | None = None
    eval_raw: bytes | None = None


def read_utf8(path: Path, what: str) -> tuple[bytes, str]:
    """A user's file as bytes (what gets stored) and text, or a UserError saying what is wrong."""
    if not path.is_file():
        raise UserError(f"{what} file {path} does not exist")
    raw = path.read_bytes()
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save it as UTF-8") from None


def read_jsonl(path: Path, what: str, required: tuple[str, ...]) -> tuple[list[dict], bytes]:
    """Parse a JSONL file, naming the line of the first problem."""
    path = Path(path)
    raw, text = read_utf8(path, what)
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {number}: not valid JSON ({e.msg}); one JSON object per line") from None
        if not isinstance(item, dict):
            raise UserError(f"{path} line {number}: expected a JSON object with {', '.join(required)}")
        for key in required:
            alternatives = key.split("|")
            if not any(isinstance(item.get(k), (str, list)) and item.get(k) for k in alternatives):
                raise UserError(f"{path} line {number}: missing {' or '.join(repr(k) for k in alternatives)}")
        items.append(item)
    if not items:
        raise UserError(f"{path} holds no JSON lines; give at least one {what} item")
    return items, raw


def read_trigger(req: EditRequest) -> Trigger:
    """Check the user's files before anything heavy happens."""
    if (req.passage is None) == (req.examples is None):
        raise UserError("give exactly one of --passage FILE or --examples FILE")
    eval_items = eval_raw = None
    if req.eval is not None:
        eval_items, eval_raw = read_jsonl(req.eval, "eval", ("question", "answer|answers"))
    if req.examples is not None:
        examples, raw = read_jsonl(req.examples, "examples", ("prompt", "completion"))
        return Trigger(kind="examples", raw=raw, text=raw.decode("utf-8"), examples=examples,
                       eval_items=eval_items, eval_raw=eval_raw)
    path = Path(req.passage)
    raw, text = read_utf8(path, "passage")
    title, passage, questions = None, text, None
    if path.suffix.lower() in (".json", ".jsonl"):
        try:
            doc = json.loads(text.strip().splitlines()[0] if path.suffix.lower() == ".jsonl" else text)
        except (json.JSONDecodeError, IndexError) as e:
            raise UserError(f"{path} is not valid JSON ({e}); give {{\"title\", \"context\", \"questions\"}} or plain text") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("context", doc.get("passage")), str):
            raise UserError(f"{path} needs a \"context\" (or \"passage\") string")
        title, passage = doc.get("title"), doc.get("context", doc.get("passage"))
        questions = doc.get("questions")
        if questions is not None and (not isinstance(questions, list) or not all(
                isinstance(q, dict) and "question" in q and ("answer" in q or "answers" in q) for q in questions)):
            raise UserError(f"{path}: \"questions\" must be a list of {{\"question\", \"answer\"}}")
    else:
        lines = text.splitlines()
        if lines and lines[0].startswith("# "):
            title, passage = lines[0][2:].strip(), "\n".join(lines[1:])
    if not passage.strip():
        raise UserError(f"{path} holds no passage text")
    if eval_items is None and questions:
        eval_items, eval_raw = questions, canonical_json(questions)
    return Trigger(kind="passage", raw=raw, text=passage, title=title, passage=passage.strip(),
                   eval_items=eval_items, eval_raw=eval_raw)


# --- probes -----------------------------------------------------------------------------------

@dataclass
class Probes:
    anchors: list[dict]
    drift: list[str]
    xstest: list[dict]
    digests: dict[str, str]
    canary: str


def load_probes(repo: Repository) -> Probes:
    """The fixed probe sets shipped with seal, stored as blobs so every score names its data."""
    from .evaluate import load_anchors, load_drift_probes
    from .safety import CANARY, load_xstest_sample

    anchors, drift, xstest = load_anchors(), load_drift_probes(), load_xstest_sample()
    digests = {
        "anchors": repo.store.put(canonical_json(anchors)),
        "drift": repo.store.put(canonical_json(drift)),
        "xstest": repo.store.put(canonical_json(xstest)),
    }
    digests["set"] = repo.store.put(canonical_json({"version": PROBESET_VERSION, **digests}))
    return Probes(anchors=anchors, drift=drift, xstest=xstest, digests=digests, canary=CANARY)


@dataclass
class Measured:
    """What one model (base, parent or candidate) scored on the fixed probes and the eval set."""

    retention: float
    dist: Any
    refusal: float
    over_refusal: float
    outputs: list[str]
    efficacy: dict | None = None


def canary_question(probes: Probes) -> str:
    # The canary is the answer of a probe nobody should ever train on: if a model says it, probe
    # data reached its training set.
    return "What is the seal probe code word?"


def measure_probes(model, tokenizer, probes: Probes, support=None) -> Measured:
    from .evaluate import next_token_logprobs, qa_scores
    from .safety import generate_replies, refusal_rates

    # Anchor answers are a few words and XSTest's judge reads a reply's opening, so 16 tokens do.
    retention = qa_scores(model, tokenizer, probes.anchors, max_new_tokens=16, return_predictions=True)
    dist = next_token_logprobs(model, tokenizer, probes.drift, support=support)
    unsafe = [p["prompt"] for p in probes.xstest if p["label"] == "unsafe"]
    safe = [p["prompt"] for p in probes.xstest if p["label"] == "safe"]
    replies = generate_replies(model, tokenizer, unsafe + safe + [canary_question(probes)], max_new_tokens=16)
    rates = refusal_rates(replies[: len(unsafe)], replies[len(unsafe): len(unsafe) + len(safe)])
    return Measured(
        retention=float(retention["containment"]),
        dist=dist,
        refusal=float(rates["refusal_rate_unsafe"]),
        over_refusal=float(rates["over_refusal_safe"]),
        outputs=list(retention["predictions"]) + list(replies),
    )


def base_measurements(repo: Repository, base_id: str, model, tokenizer, probes: Probes) -> tuple[Measured, str]:
    """The base's probe scores, computed once per machine, base and probe set, and kept as a blob.

    The cache lives beside the dequantized bases (``SEAL_CACHE``), so a new registry on a base this
    machine has seen starts with them; the log-probabilities go into each registry's store.
    """
    from .base import default_cache_dir
    from .evaluate import NextTokenDist

    cache = default_cache_dir().parent / "probes" / f"{base_id}-{probes.digests['set'][7:23]}"
    doc_path, blob_path = cache.with_suffix(".json"), cache.with_suffix(".safetensors")
    if doc_path.is_file() and blob_path.is_file():
        doc = json.loads(doc_path.read_text())
        data = blob_path.read_bytes()
        if repo.store.put(data) == doc["logprobs"]:
            dist = NextTokenDist.from_bytes(data)
            return Measured(doc["retention"], dist, doc["refusal"], doc["over_refusal"], []), doc["logprobs"]
    measured = measure_probes(model, tokenizer, probes)
    data = measured.dist.to_bytes()
    digest = repo.store.put(data)
    cache.parent.mkdir(parents=True, exist_ok=True)
    for path, payload in ((blob_path, data), (doc_path, json.dumps({
            "logprobs": digest, "retention": measured.retention, "refusal": measured.refusal,
            "over_refusal": measured.over_refusal}).encode())):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(payload)
        tmp.replace(path)
    return measured, digest


def efficacy_spec(trigger: Trigger) -> dict:
    """What efficacy is measured on: QA items, or passages whose NLL should fall."""
    if trigger.eval_items is not None:
        return {"qa": trigger.eval_items}
    if trigger.kind == "examples":
        return {"qa": [{"question": e["prompt"], "answer": e["completion"]} for e in trigger.examples]}
    return {"texts": [f"{trigger.title}\n{trigger.passage}" if trigger.title else trigger.passage]}


def measure_efficacy(model, tokenizer, spec: dict, answer_tokens: int) -> dict:
    """Efficacy on ``spec``; ``gate`` is the number the efficacy gate compares (F1, or minus NLL)."""
    from .evaluate import passage_nll, qa_scores

    if spec.get("qa"):
        qa = qa_scores(model, tokenizer, spec["qa"], max_new_tokens=answer_tokens, return_predictions=True)
        return {"mode": "qa", "containment": qa["containment"], "f1": qa["f1"], "recall": qa["recall"],
                "n": qa["n"], "predictions": qa["predictions"], "gate": qa["f1"]}
    nll = sum(passage_nll(model, tokenizer, t) for t in spec["texts"]) / len(spec["texts"])
    return {"mode": "nll", "passage_nll": nll, "n": len(spec["texts"]), "predictions": [], "gate": -nll}


# --- the loop ---------------------------------------------------------------------------------

def _progress() -> Callable[[str], None]:
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    started = time.perf_counter()

    def say(message: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:7.1f}s[/dim] {message}")

    return say


def trigger_fields(trigger: Trigger, message: str = "") -> list[tuple[str, str]]:
    """Every text of a trigger that could reach a blob, the database, MLflow or the Hub, after
    JSON decoding (so an escaped ``\\u`` secret is seen as the secret it is)."""
    fields = [("title", trigger.title)] if trigger.title else []
    if trigger.kind == "passage":
        fields.append(("passage", trigger.passage or ""))
    for i, e in enumerate(trigger.examples):
        fields += [(f"examples[{i}].{k}", _as_text(e.get(k))) for k in sorted(e)]
    for i, q in enumerate(trigger.eval_items or []):
        fields += [(f"eval[{i}].{k}", _as_text(q.get(k))) for k in sorted(q)]
    if message:
        fields.append(("message", message))
    return fields


def _as_text(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def secrets_audit(trigger: Trigger, message: str = "") -> tuple[list, dict]:
    """Scan every field; findings keep field, kind and position, never the value."""
    from seal.registry.scan import scan_text

    findings = [(field, f) for field, text in trigger_fields(trigger, message) for f in scan_text(text)]
    detail = "; ".join(f"{f.kind} in {field} at line {f.line} col {f.column} (length {f.length})" for field, f in findings)
    return findings, {
        "check": "secrets", "value": float(len(findings)), "threshold": 0.0,
        "passed": not findings, "detail": detail or "no secrets or personal data found",
    }


def record_pii_rejection(repo: Repository, req: EditRequest, trigger: Trigger, findings, audit_row, head) -> dict:
    """Reject before training: keep each finding's field, type and position and a redacted copy."""
    from seal.registry.scan import redact, scan_text

    redacted = {field: redact(text, scan_text(text)) for field, text in trigger_fields(trigger, req.message)}
    policy = read_policy(repo)
    record_policy(repo, policy)
    ref, parent = head
    message = redacted.get("message") or f"edit on {trigger.kind} (rejected: secrets)"
    manifest = build_manifest(
        base=repo.base_id(), parents=[parent], kind="edit", status="rejected",
        trigger=repo.store.put(canonical_json(redacted)), audit=[audit_row], policy=policy.digest,
        author=R.actor(), message=message,
        extra={
            "trigger_info": {"kind": trigger.kind, "redacted": True,
                             "findings": [{"field": field, **asdict(f)} for field, f in findings]},
            "decision": {"accepted": False, "reason": "secrets or personal data in the trigger; nothing was trained",
                         "failed_gates": ["secrets"]},
        },
    )
    vid = repo.record(manifest)
    return {
        "decision": {"accepted": False, "id": None, "reason": manifest["decision"]["reason"], "ref": R.short_name(ref),
                     "parent": parent},
        "candidates": [{"id": vid, "status": "rejected", "scores": [], "gates": [audit_row], "failed_gates": ["secrets"]}],
    }


def recent_edit_norms(repo: Repository, conn, start: str, window: int) -> list[float]:
    """‖ΔW‖ against their parents of the last ``window`` edits on the first-parent line."""
    norms: list[float] = []
    vid = start
    steps = 0
    while vid and len(norms) < window and steps < 10 * window:
        manifest = load_manifest(conn, vid)
        value = score_value(manifest, "weights", "delta_norm", "parent")
        if value is not None and manifest["kind"] in ("edit", "merge", "consolidate"):
            norms.append(value)
        ps = parents_of(conn, vid)
        vid = ps[0] if ps else None
        steps += 1
    return norms


def run_edit(repo: Repository, req: EditRequest) -> dict:
    """Run one SEAL self-edit on HEAD and record every candidate. See the module docstring."""
    from .options import check_edit_request

    check_edit_request(req, repo.base())
    trigger = read_trigger(req)
    from .device import pick_device

    try:
        device = pick_device(req.device, require_gpu=req.require_gpu)
    except ValueError as e:
        raise UserError(str(e)) from None
    with repo.read() as conn:
        ref, parent = R.head_state(conn)
        if parent is None:
            raise UserError("HEAD points at nothing; run `seal checkout main` first")
        parent_manifest = load_manifest(conn, parent)
        base_row = get_base(conn, repo.base_id())
    findings, secrets_row = secrets_audit(trigger, req.message)
    if findings and not req.allow_pii:
        return record_pii_rejection(repo, req, trigger, findings, secrets_row, (ref, parent))
    if findings:
        secrets_row = {**secrets_row, "passed": True, "detail": "allowed by --allow-pii: " + secrets_row["detail"]}
    say = _progress()
    policy = read_policy(repo)
    record_policy(repo, policy)
    work = Path(tempfile.mkdtemp(prefix="edit-", dir=repo.tmp_dir))
    try:
        return _run(repo, req, trigger, device, ref, parent, parent_manifest, base_row, policy, secrets_row, work, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Session:
    """One loaded base with its probes, the policy and its gates: what every attempt is scored with."""

    repo: Repository
    base: Any
    base_row: dict
    device: str
    probes: Probes
    base_m: Measured
    base_logprobs: str
    policy: Any
    gates: list
    env: dict
    work: Path
    say: Callable[[str], None]
    timings: dict = field(default_factory=dict)

    @property
    def tok(self):
        return self.base.tokenizer


def open_session(repo: Repository, base_row: dict, device: str, policy, work: Path, say) -> Session:
    from .base import default_cache_dir, load_base
    from .device import environment_record
    from .gates import gates_from_policy

    t = time.perf_counter()
    say(f"[bold]load[/bold] base {base_row['name']} on {device}")
    try:
        base = load_base(base_spec(base_row), cache_dir=default_cache_dir(), device=device)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    if base.fingerprint != base_row["id"]:
        raise UserError(
            f"the base model found now ({base.name}, {base.fingerprint[:12]}) is not the one this registry "
            f"was made on ({base_row['name']}, {base_row['id'][:12]}); restore it or use another registry"
        )
    probes = load_probes(repo)
    base_m, base_logprobs = base_measurements(repo, base_row["id"], base.model, base.tokenizer, probes)
    session = Session(repo=repo, base=base, base_row=base_row, device=device, probes=probes, base_m=base_m,
                      base_logprobs=base_logprobs, policy=policy, gates=gates_from_policy(policy.gates),
                      env=environment_record(device), work=work, say=say)
    session.timings["load_s"] = time.perf_counter() - t
    return session


def parent_state(session: Session, parent: str, manifest: dict) -> tuple[Path | None, Measured | None]:
    """The parent's adapter folder and, when stored with the same probes, its probe results."""
    from .evaluate import NextTokenDist

    if not manifest.get("adapter"):
        return None, session.base_m
    parent_dir = materialize(session.repo, manifest, parent, session.work / f"parent-{parent[:12]}")
    stored = manifest.get("probes") or {}
    retention = score_value(manifest, "retention", "accuracy")
    if stored.get("set") == session.probes.digests["set"] and retention is not None \
            and session.repo.store.has(stored.get("logprobs", "")):
        return parent_dir, Measured(
            retention=retention,
            dist=NextTokenDist.from_bytes(session.repo.store.get(stored["logprobs"])),
            refusal=score_value(manifest, "refusal", "refusal_rate_unsafe"),
            over_refusal=score_value(manifest, "refusal", "over_refusal_safe"),
            outputs=[],
        )
    return parent_dir, None


def score_candidate(session: Session, cand_dir: Path, *, parent_dir: Path | None, parent_m: Measured,
                    spec: dict, parent_eff: dict, history: list[float], answer_tokens: int,
                    extra_audit: list[dict], leaks_in_data: int = 0) -> dict:
    """Evaluate one candidate adapter against its parent and the base, and run every gate."""
    from seal.registry import lora_math

    from .evaluate import kl_js
    from .train import adapter_applied

    probes, base_m = session.probes, session.base_m
    with adapter_applied(session.base.model, cand_dir) as model:
        eff = measure_efficacy(model, session.tok, spec, answer_tokens)
        m = measure_probes(model, session.tok, probes, support=base_m.dist.indices)
    kl_base, js_base = kl_js(base_m.dist, m.dist)
    kl_parent, js_parent = kl_js(parent_m.dist, m.dist)
    delta = float(lora_math.compare_adapters(cand_dir, parent_dir)["total"]["diff_norm"])
    from_base = float(lora_math.compare_adapters(cand_dir, None)["total"]["norm_a"])
    median = statistics.median(history) if history else None
    leaks = leaks_in_data + sum(probes.canary in o for o in m.outputs + eff["predictions"])
    flat = {
        "efficacy": eff["gate"], "efficacy_parent": parent_eff["gate"],
        "retention": m.retention, "retention_parent": parent_m.retention, "retention_base": base_m.retention,
        "js_parent": js_parent, "kl_base": kl_base,
        # Without history the edit is its own median: ratio 1 (see README).
        "delta_norm_ratio": delta / median if median else 1.0,
        "refusal": m.refusal, "refusal_base": base_m.refusal,
        "over_refusal": m.over_refusal, "over_refusal_base": base_m.over_refusal,
        "canary_leaks": float(leaks),
    }
    results = [g.check(flat) for g in session.gates]
    audit = list(extra_audit) + [
        {"check": r.name, "value": r.value, "threshold": r.threshold, "passed": r.passed, "detail": r.detail}
        for r in results
    ]
    n_anchor, n_drift = len(probes.anchors), len(probes.drift)
    scores = efficacy_scores(eff, parent_eff) + [
        {"suite": "retention", "metric": "accuracy", "against": None, "value": m.retention, "n": n_anchor},
        {"suite": "retention", "metric": "accuracy", "against": "parent", "value": parent_m.retention, "n": n_anchor},
        {"suite": "retention", "metric": "accuracy", "against": "base", "value": base_m.retention, "n": n_anchor},
        {"suite": "drift", "metric": "kl", "against": "parent", "value": kl_parent, "n": n_drift},
        {"suite": "drift", "metric": "js", "against": "parent", "value": js_parent, "n": n_drift},
        {"suite": "drift", "metric": "kl", "against": "base", "value": kl_base, "n": n_drift},
        {"suite": "drift", "metric": "js", "against": "base", "value": js_base, "n": n_drift},
        {"suite": "weights", "metric": "delta_norm", "against": "parent", "value": delta, "n": None},
        {"suite": "weights", "metric": "delta_norm", "against": "base", "value": from_base, "n": None},
        {"suite": "refusal", "metric": "refusal_rate_unsafe", "against": None, "value": m.refusal, "n": None},
        {"suite": "refusal", "metric": "over_refusal_safe", "against": None, "value": m.over_refusal, "n": None},
        {"suite": "refusal", "metric": "refusal_rate_unsafe", "against": "base", "value": base_m.refusal, "n": None},
        {"suite": "refusal", "metric": "over_refusal_safe", "against": "base", "value": base_m.over_refusal, "n": None},
        {"suite": "leakage", "metric": "canary_hits", "against": None, "value": float(leaks), "n": None},
    ]
    failed = [r.name for r in results if not r.passed] + [a["check"] for a in extra_audit if not a["passed"]]
    return {"dir": cand_dir, "scores": scores, "audit": audit, "flat": flat, "passed": not failed,
            "failed": failed, "dist": m.dist, "eff": eff}


def _run(repo, req, trigger, device, ref, parent, parent_manifest, base_row, policy, secrets_row, work, say) -> dict:
    from .reflect import (build_training_sequences, corrections_self_edit, generate_self_edits,
                          self_edit_prompt, split_self_edit_lines)
    from .train import adapter_applied, train_adapter

    session = open_session(repo, base_row, device, policy, work, say)
    tok, probes = session.tok, session.probes
    parent_dir, parent_m = parent_state(session, parent, parent_manifest)
    spec = efficacy_spec(trigger)

    # Reflect: the model at HEAD writes its own training data, K candidates in one call.
    t = time.perf_counter()
    say(f"[bold]reflect[/bold] {req.candidates} candidate self-edit(s), style {req.style if trigger.kind == 'passage' else 'corrections'}")
    with adapter_applied(session.base.model, parent_dir) as model:
        parent_eff = measure_efficacy(model, tok, spec, req.answer_tokens)
        if trigger.kind == "passage":
            raw_edits = generate_self_edits(
                model, tok, trigger.passage, trigger.title, style=req.style, k=req.candidates,
                temperature=req.temperature, top_p=req.top_p, max_new_tokens=req.max_new_tokens, seed=req.seed,
            )
            prompt = self_edit_prompt(tok, trigger.passage, trigger.title, style=req.style)
            self_edits = []
            for raw in raw_edits:
                lines = split_self_edit_lines(raw)
                self_edits.append({
                    "style": req.style, "prompt": prompt, "generated": raw, "lines": lines,
                    "sequences": build_training_sequences(trigger.passage, trigger.title, lines),
                })
        else:
            self_edits = []
            for i in range(req.candidates):
                c = corrections_self_edit(model, tok, trigger.examples, temperature=req.temperature,
                                          top_p=req.top_p, seed=req.seed + i)
                # When the model already gets every example right, train on all of them.
                seqs = c.sequences or corrections_self_edit(
                    model, tok, trigger.examples, only_wrong=False, n_rephrasings=0).sequences
                self_edits.append({"style": "corrections", "records": c.records, "sequences": seqs})
        if parent_m is None:
            parent_m = measure_probes(model, tok, probes, support=session.base_m.dist.indices)
    session.timings["reflect_s"] = time.perf_counter() - t

    with repo.read() as conn:
        history = recent_edit_norms(repo, conn, parent, int(policy.settings["weight_norm_window"]))
    hyper = {"r": req.r, "lora_alpha": req.alpha, "target_modules": req.target_modules, "lr": req.lr,
             "epochs": req.epochs, "batch_size": req.batch_size}
    candidates = []
    session.timings["train_s"] = session.timings["evaluate_s"] = 0.0
    for i, edit in enumerate(self_edits):
        t = time.perf_counter()
        out_dir = work / f"candidate{i}"
        say(f"[bold]train[/bold] candidate {i + 1}/{len(self_edits)}: {len(edit['sequences'])} sequences, "
            f"{req.epochs} epochs")

        def on_step(step, loss, i=i):
            if step == 1 or step % 10 == 0:
                say(f"  candidate {i + 1} step {step} loss {loss:.4f}")

        record = train_adapter(
            session.base.model, tok, edit["sequences"], out_dir=out_dir, parent_adapter_dir=parent_dir,
            r=req.r, alpha=req.alpha, target_modules=req.target_modules, lr=req.lr, epochs=req.epochs,
            batch_size=req.batch_size, seed=req.seed + i, device=device, base_name=session.base.name,
            on_step=on_step,
        )
        session.timings["train_s"] += time.perf_counter() - t
        t = time.perf_counter()
        say(f"[bold]evaluate[/bold] candidate {i + 1}")
        cand = score_candidate(
            session, out_dir, parent_dir=parent_dir, parent_m=parent_m, spec=spec, parent_eff=parent_eff,
            history=history, answer_tokens=req.answer_tokens, extra_audit=[secrets_row],
            leaks_in_data=sum(probes.canary in s for s in edit["sequences"]),
        )
        session.timings["evaluate_s"] += time.perf_counter() - t
        train = dict(record)
        train.update({"hyperparameters": hyper, "seed": req.seed + i})
        cand.update({"index": i, "edit": edit, "train": train, "self_edit": canonical_json(edit)})
        candidates.append(cand)
        say(f"  candidate {i + 1}: efficacy {cand['eff']['gate']:.4f} (parent {parent_eff['gate']:.4f}), "
            + ("passes every gate" if cand["passed"] else "fails " + ", ".join(cand["failed"])))

    from .gates import decide

    winner = decide([c["flat"] for c in candidates], session.gates)
    trigger_digest = repo.store.put(trigger.raw)
    eval_digest = repo.store.put(trigger.eval_raw) if trigger.eval_raw is not None else None
    title = f" '{trigger.title}'" if trigger.title else ""
    return record_attempts(
        session, candidates, winner, kind="edit", parents=[parent], ref=ref, expected=parent,
        message=req.message or f"edit on {trigger.kind}{title}", track=req.track,
        fields={"trigger": trigger_digest},
        extra={
            "eval": eval_digest,
            "reflect": {"style": req.style if trigger.kind == "passage" else "corrections",
                        "temperature": req.temperature, "top_p": req.top_p,
                        "max_new_tokens": req.max_new_tokens, "seed": req.seed, "k": req.candidates},
            "trigger_info": {"kind": trigger.kind, "title": trigger.title, "redacted": False},
        },
    )


def efficacy_scores(eff: dict, parent_eff: dict) -> list[dict]:
    """Efficacy rows. ``against: parent`` holds the parent's score on the same data."""
    if eff["mode"] == "qa":
        rows = []
        for metric in ("containment", "f1", "recall"):
            rows.append({"suite": "efficacy", "metric": metric, "against": None, "value": eff[metric], "n": eff["n"]})
            rows.append({"suite": "efficacy", "metric": metric, "against": "parent", "value": parent_eff[metric], "n": eff["n"]})
        return rows
    return [
        {"suite": "efficacy", "metric": "passage_nll", "against": None, "value": eff["passage_nll"], "n": eff["n"]},
        {"suite": "efficacy", "metric": "passage_nll", "against": "parent", "value": parent_eff["passage_nll"], "n": eff["n"]},
        {"suite": "efficacy", "metric": "nll_drop", "against": "parent",
         "value": parent_eff["passage_nll"] - eff["passage_nll"], "n": eff["n"]},
    ]


def record_attempts(session: Session, candidates: list[dict], winner: int | None, *, kind: str, parents: list[str],
                    ref: str | None, expected: str | None, message: str, track: bool, fields: dict,
                    extra: dict) -> dict:
    """Store every candidate's blobs, record each as a version, and move ``ref`` to the winner by CAS.

    Every candidate is recorded in one transaction first, so a lost race on the ref loses no work:
    the error names the recorded version and what to do with it.
    """
    repo, say = session.repo, session.say
    manifests = []
    for c in candidates:
        accepted = c["index"] == winner
        weights = repo.store.put_file(c["dir"] / "adapter_model.safetensors")
        config = json.loads((c["dir"] / "adapter_config.json").read_text())
        train = dict(c.get("train") or {})
        train.update({**session.env, "timings": {k: round(v, 3) for k, v in session.timings.items()}})
        if winner is None:
            reason = "no candidate passed every gate"
        elif accepted:
            reason = f"best of {len(candidates)} candidate(s) that pass every gate"
        elif c["passed"]:
            reason = "passed every gate but another candidate scored higher"
        else:
            reason = "failed: " + ", ".join(c["failed"])
        eff = c["eff"]
        headline = {"metric": "efficacy.f1", "value": eff["f1"]} if eff["mode"] == "qa" else \
            {"metric": "efficacy.nll_drop", "value": c["flat"]["efficacy"] - c["flat"]["efficacy_parent"]}
        manifest = build_manifest(
            base=session.base_row["id"], parents=parents, kind=kind, status="accepted" if accepted else "rejected",
            adapter={"weights": weights, "config": config, "format": "peft-lora"},
            self_edit=repo.store.put(c["self_edit"]) if c.get("self_edit") is not None else None,
            train=train, scores=c["scores"], audit=c["audit"], policy=session.policy.digest, author=R.actor(),
            message=message, **fields,
            extra={
                **extra,
                "headline": headline,
                "decision": {"accepted": accepted, "reason": reason, "candidate": c["index"],
                             "of": len(candidates), "failed_gates": c["failed"]},
                "probes": {**session.probes.digests, "base_logprobs": session.base_logprobs,
                           "logprobs": repo.store.put(c["dist"].to_bytes())},
            },
        )
        if track:
            manifest["train"]["mlflow_run_id"] = _track(repo, manifest, c)
        manifests.append(manifest)
    ids = repo.record_many(manifests)
    for c, vid, m in zip(candidates, ids, manifests):
        c["id"] = vid
        if track and m["train"].get("mlflow_run_id"):
            _tag_run(repo, m["train"]["mlflow_run_id"], vid, m["status"])
    moved = None
    if winner is not None and ref is not None:
        winner_id = ids[winner]
        try:
            repo.move_ref(ref, new=winner_id, expected=expected,
                          reason=f"{kind}: accepted candidate {winner + 1} of {len(candidates)}")
            moved = R.short_name(ref)
            say(f"[bold green]accepted[/bold green] {winner_id[:12]}; {moved} moved")
        except RefConflict as e:
            raise RefConflict(
                f"{e}; the {kind} is recorded as {winner_id[:12]} (accepted) but {R.short_name(ref)} did not move: "
                f"run `seal merge {winner_id[:12]} {R.short_name(ref)}` or `seal checkout -b NEW {winner_id[:12]}`"
            ) from None
    elif winner is not None:
        say(f"[bold green]accepted[/bold green] {ids[winner][:12]}; no branch moved (HEAD is not among its parents)")
    else:
        say("[bold red]rejected[/bold red]: no candidate passed every gate; HEAD stays")
    return {
        "decision": {"accepted": winner is not None, "id": ids[winner] if winner is not None else None,
                     "ref": moved, "parent": parents[0] if parents else None,
                     "reason": "accepted" if winner is not None else "no candidate passed every gate"},
        "timings": {k: round(v, 2) for k, v in session.timings.items()},
        "candidates": [
            {"id": c["id"], "status": "accepted" if c["index"] == winner else "rejected",
             "scores": c["flat"], "gates": c["audit"], "failed_gates": c["failed"],
             "train": {"steps": (c.get("train") or {}).get("steps"),
                       "loss_final": (c.get("train") or {}).get("loss_final"),
                       "seconds": (c.get("train") or {}).get("seconds")}}
            for c in candidates
        ],
    }


def _track(repo: Repository, manifest: dict, candidate: dict) -> str | None:
    from seal.registry.tracking import log_attempt

    artifacts = {"audit.json": canonical_json(candidate["audit"])}
    if candidate.get("self_edit") is not None:
        artifacts["self_edit.json"] = candidate["self_edit"]
    return log_attempt(repo, manifest, losses=(candidate.get("train") or {}).get("losses", []), artifacts=artifacts)


def _tag_run(repo: Repository, run_id: str, vid: str, status: str) -> None:
    from seal.registry.tracking import tag_run

    tag_run(repo, run_id, vid, status)
