"""`seal learn`: the outer loop of SEAL. The model learns to write better self-edits (ReST-EM).

One step (:func:`run_learn`), each part recorded:

1. **Expectation.** The dataset is read from the lineage (:func:`seal.editor.learning.build_dataset`):
   per trigger, the self-edits whose edit beat its parent by the margin, best first; it is
   stored as a blob that names every source version.
2. **Maximisation.** The writer is a LoRA on the same base, trained on (self-edit prompt →
   the self-edit the model wrote), in the chat format, with the loss on the written part only
   (:func:`train_writer`). ReST-EM's way: each writer is trained from the base on its own dataset,
   not on top of the previous writer, so errors do not compound.
3. **Evaluation.** Every held-out passage is edited twice from the same parent (HEAD's tip when
   the command starts), once with self-edits written by the new writer and once by the old one
   (the tip of the writer's ref, or the bare base when there is none), with the same seeds and
   settings. The paired gain per trigger is the new side's mean efficacy gain over the parent
   minus the old side's. The writer is accepted only when the one-sided 95% lower bound of the
   mean paired gain (seeded percentile bootstrap, :func:`seal.editor.stats.bootstrap_gain_gate`)
   is above 0, and the refusal, over-refusal, leakage and secrets checks pass: the writer adapter
   itself answers the safety probes through the engine's measurement seam, its training data and
   the self-edits it wrote are scanned for the canary and for secrets.
4. **Record.** The writer is a version of kind ``writer`` whose parent is the previous writer
   (or the root), whose trigger is the dataset and whose ``learn`` field lists every held-out
   edit; accepted, ``refs/writers/NAME`` moves to it by compare-and-swap, rejected, the ref stays.

The held-out edits are ordinary edit versions, accepted or rejected by the usual gates, recorded
on no branch (nothing moves: the parent is the same for both sides, so the comparison stays
paired); their manifests carry ``writer`` (who wrote the self-edit: ``candidate`` with the new
writer's adapter digest, or the old writer) and ``learn`` (the dataset and the side), and the
writer version lists their ids. Nothing is lost, and no branch is changed by an evaluation.

Rounds (:func:`run_rounds`, ``--rounds N --passages TRAIN.jsonl``): sample (the training
passages through the edit stream, K candidates each, on a branch of their own per round, written
by the current writer) → reward (each candidate's gain over its parent, as recorded) → fine-tune
(the round's dataset) → evaluate (as above), N times.

    >>> result = run_learn(reg, LearnRequest(holdout=Path("held.jsonl")))     # doctest: +SKIP
    >>> result["writer"]["status"], result["gain"]["ci_low"] > 0              # doctest: +SKIP
    ('accepted', True)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from seal.registry.adapters import ADAPTER_CONFIG_FILE, WEIGHTS_FILE
from seal.registry.errors import NoHead, RefConflict, UserError
from seal.registry.store import refs as R
from seal.registry.store.objects import build_manifest, now_utc

from .learning import WRITER_GAIN, WRITER_GATE, WRITERS, Dataset, Selection, build_dataset
from .request import EditRequest
from .writer import Writer, base_writer, resolve_writer

# Held-out edits are compared at the same seed on both sides; the writer trains on a tiny set, so
# a few epochs at the edit's learning rate fit it without memorising one example.
WRITER_EPOCHS = 3
WRITER_MAX_LENGTH = 1024
PROBE_GATES = ("refusal", "over_refusal", "leakage")


@dataclass
class LearnRequest:
    """Everything `seal learn` takes. ``edit`` is the template of the held-out (and sampling) edits."""

    holdout: Path | None = None
    selection: Selection = field(default_factory=Selection)
    writer: str = "main"  # the track: refs/writers/<writer>
    epochs: int = WRITER_EPOCHS
    lr: float = 3e-4
    r: int = 32
    alpha: int = 64
    seed: int = 0
    edit: EditRequest = field(default_factory=lambda: EditRequest(candidates=1))
    rounds: int = 0  # 0: learn once from the registry as it is
    passages: Path | None = None  # the training passages of the rounds
    candidates: int = 4  # K per training passage when sampling
    message: str = ""
    dry_run: bool = False

    @property
    def ref(self) -> str:
        return WRITERS + self.writer


def check_learn_request(lreq: LearnRequest, base_row: dict | None) -> None:
    """Every option, before any model loads (a UserError names the option)."""
    from .options import check_number, check_request, check_text

    R.check_ref_name(lreq.writer, "writer")
    check_number("--epochs", lreq.epochs, low=1, high=1000, integer=True)
    check_number("--lr", lreq.lr, low=0, low_open=True, high=1e6)
    check_number("--r", lreq.r, low=1, high=4096, integer=True)
    check_number("--alpha", lreq.alpha, low=0, low_open=True, high=1e6)
    check_number("--seed", lreq.seed, low=0, high=2**32 - 1, integer=True)
    check_number("--rounds", lreq.rounds, low=0, high=100, integer=True)
    check_number("--candidates", lreq.candidates, low=1, high=64, integer=True)
    check_number("--margin", lreq.selection.margin, low=-1e6, high=1e6)
    check_number("--per-trigger", lreq.selection.per_trigger, low=1, high=1000, integer=True)
    check_text(lreq.message, "-m", 10_000)
    if (lreq.rounds > 0) != (lreq.passages is not None):
        raise UserError("--rounds N and --passages TRAIN.jsonl go together")
    if lreq.holdout is None and not lreq.dry_run:
        raise UserError("give --holdout HELD.jsonl: a writer is accepted only if it beats the old one on held-out passages")
    template = replace(lreq.edit, passage=None, examples=None, passages=lreq.holdout or "-", eval=None)
    check_request(template, base_row)


# --- the dataset and the held-out passages (no model) ---------------------------------------------

def read_passages(path: Path, what: str) -> list:
    """Every passage of a JSONL file (SEAL's format), read and checked whole, scanned for secrets."""
    from .trigger import read_stream, secrets_audit

    if str(path) == "-":
        raise UserError(f"{what} must be a file, not stdin")
    triggers = list(read_stream(path))
    for t in triggers:
        findings, _ = secrets_audit(t)
        if findings:
            name, f = findings[0]
            raise UserError(f"{t.where}: {f.kind} in {name}; remove it from the {what} file")
    return triggers


def check_disjoint(reg, heldout: list, dataset: Dataset | None, train: list | None = None) -> None:
    """Held-out passages must not be ones the writer learns from (by digest, text or title)."""
    from seal.registry.store.objects import blob_digest

    held = {blob_digest(t.raw) for t in heldout}
    texts = {" ".join(t.passage.split()) for t in heldout}
    titles = {t.title for t in heldout if t.title}
    if dataset is not None and held & set(dataset.triggers):
        raise UserError("a --holdout passage is in the dataset the writer learns from; hold out other passages")
    for t in train or []:
        if " ".join(t.passage.split()) in texts or (t.title and t.title in titles):
            raise UserError(f"{t.where} ({t.title}) is also held out; split train and held-out passages by title")


# --- training the writer --------------------------------------------------------------------------

def writer_pairs(tok, dataset: Dataset, max_length: int = WRITER_MAX_LENGTH) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example: the prompt as the model saw it, masked, then what it wrote
    and the end of its turn. Encoded apart, so the prompt's tokens are exactly those of generation."""
    from .reflect import RESPONSE_PREFIX

    end = _turn_end(tok)
    pairs = []
    for e in dataset.examples:
        completion = e.completion
        prefix = RESPONSE_PREFIX.get(e.style, "")
        if prefix and e.prompt.endswith(prefix) and completion.startswith(prefix):
            completion = completion[len(prefix):]  # the prompt already ends with the cue
        prompt_ids = tok(e.prompt, add_special_tokens=False)["input_ids"]
        written = tok(completion + end, add_special_tokens=False)["input_ids"]
        ids, labels = (prompt_ids + written)[:max_length], ([-100] * len(prompt_ids) + written)[:max_length]
        if any(x != -100 for x in labels[1:]):
            pairs.append((ids, labels))
    return pairs


def _turn_end(tok) -> str:
    """What closes an assistant turn in the chat template (e.g. ``<|im_end|>\\n``)."""
    from .generation import chat_example, chat_prompt

    head, full = chat_prompt(tok, "u"), chat_example(tok, "u", "a")
    return full[len(head) + 1:] if full.startswith(head + "a") else (tok.eos_token or "")


def train_writer(session, dataset: Dataset, lreq: LearnRequest, out_dir: Path, on_step=None) -> dict:
    """A fresh LoRA on the base, fitted to the dataset's (prompt → self-edit) pairs; the train record."""
    import torch

    from .generation import seeded
    from .train import (LossLog, attach_trainable, quiet_peft, require_plain_base, save_adapter, train_record,
                        weights_diverged, detach_adapters)

    model = session.model
    require_plain_base(model)
    pairs = writer_pairs(session.tok, dataset)
    if not pairs:
        raise UserError("no example of the dataset has a self-edit to learn from after encoding")
    device = torch.device(session.device)
    started = time.perf_counter()
    with seeded(lreq.seed, device), quiet_peft():
        peft_model = attach_trainable(model, None, r=lreq.r, alpha=lreq.alpha, target_modules="all-linear",
                                       lora_dropout=0.0)
        try:
            used = peft_model.peft_config["default"]
            params = [p for p in peft_model.parameters() if p.requires_grad]
            log = LossLog(None, 1.0)
            _fit_masked(peft_model, params, pairs, device, lreq, log, on_step)
            diverged = log.diverged or weights_diverged(params)
            peft_model.eval()
            if diverged is None:
                save_adapter(peft_model, used, out_dir, session.base.name)
            record = train_record(used, log.values, diverged, lr=lreq.lr, epochs=lreq.epochs, batch_size=1,
                                   max_length=WRITER_MAX_LENGTH, max_grad_norm=1.0, seed=lreq.seed, device=device,
                                   dtype=next(model.parameters()).dtype, from_parent=False,
                                   data=[ids for ids, _ in pairs], trainable=sum(p.numel() for p in params))
        finally:
            detach_adapters(peft_model)
    record.update({"method": "lora-sft-completion", "loss_on": "the written self-edit only (prompt masked)",
                   "seconds": round(time.perf_counter() - started, 3)})
    return record


def _fit_masked(peft_model, params: list, pairs: list, device, lreq: LearnRequest, log, on_step) -> None:
    """AdamW, linear decay, clipping, batch 1, seeded order per epoch (as train_adapter), prompt masked."""
    import random

    import torch

    from .train import fit_steps

    order, shuffler = list(range(len(pairs))), random.Random(lreq.seed)
    steps = []
    for _ in range(lreq.epochs):
        shuffler.shuffle(order)
        steps += [pairs[i] for i in order]

    def loss_of(pair):
        ids, labels = pair
        return peft_model(input_ids=torch.tensor([ids], device=device), labels=torch.tensor([labels], device=device)).loss

    fit_steps(peft_model, params, steps, loss_of, lr=lreq.lr, max_grad_norm=1.0, fused=False, log=log, on_step=on_step)


# --- evaluating on held-out passages --------------------------------------------------------------

@dataclass
class Side:
    """One writer's held-out edits: per trigger digest, the mean gain over the parent and the ids."""

    writer: dict
    gains: dict[str, float | None] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)
    secrets: int = 0  # findings in the self-edits it wrote
    canary: int = 0  # its self-edits holding the probe canary


def heldout_side(session, heldout: list, writer: Writer, edit: EditRequest, parent: str, info: dict,
                 cache: dict | None = None) -> Side:
    """Edit every held-out passage from ``parent`` with self-edits by ``writer``; nothing moves."""
    key = writer.record.get("adapter") or "base"
    if cache is not None and key in cache:
        return cache[key]
    side = Side(writer.record)
    for number, trigger in enumerate(heldout, start=1):
        session.progress.say(f"held-out {number}/{len(heldout)} ({info['side']} writer): {trigger.title or 'untitled'}")
        _heldout_edit(session, trigger, replace(edit, writer=writer, no_writer=False, self_edits=None), parent,
                      info, side)
    if cache is not None:
        cache[key] = side
    return side


def _heldout_edit(session, trigger, req: EditRequest, parent: str, info: dict, side: Side) -> None:
    from seal.registry.store.objects import blob_digest

    from .attempt import edit_attempt, run_edit_attempt
    from .trigger import secrets_audit

    _, row = secrets_audit(trigger, req.message)
    attempt = edit_attempt(session, trigger, req, ref=None, parent=parent, secrets_row=row)
    attempt.message = f"learn: held-out edit, self-edits by the {info['side']} writer" + \
        (f" on '{trigger.title}'" if trigger.title else "")
    attempt.extra["learn"] = {k: v for k, v in info.items() if v is not None}
    run_edit_attempt(session, attempt, trigger, req)
    candidates = attempt.candidates
    digest = blob_digest(trigger.raw)
    gains = [_gain(c) for c in candidates]
    finite = [g for g in gains if g is not None]
    side.gains[digest] = sum(finite) / len(finite) if finite else None
    side.ids[digest] = [c.id for c in candidates]
    side.secrets += sum(int(a.get("value") or 0) for a in attempt.extra_audit if a["check"] == "self_edit_secrets")
    side.canary += sum(session.probes.canary in (c.self_edit.generated or "") for c in candidates if c.self_edit)


def _gain(c) -> float | None:
    eff, parent = c.gate_inputs.efficacy, c.gate_inputs.efficacy_parent
    if eff is None or parent is None or not (math.isfinite(eff) and math.isfinite(parent)):
        return None
    return float(eff) - float(parent)


def paired_gains(new: Side, old: Side) -> tuple[list[float], int]:
    """Per held-out trigger, new gain minus old gain; a side with no finite gain counts as 0 (no
    change over the parent), and how many did is returned beside.

        >>> paired_gains(Side({}, {"a": 0.3, "b": None}), Side({}, {"a": 0.1, "b": 0.2}))
        ([0.19999999999999998, -0.2], 1)
    """
    diffs, missing = [], 0
    for trigger in sorted(new.gains):
        a, b = new.gains.get(trigger), old.gains.get(trigger)
        missing += (a is None) + (b is None)
        diffs.append((a or 0.0) - (b or 0.0))
    return diffs, missing


# --- the writer's gates ---------------------------------------------------------------------------

def writer_gates(session, writer: Writer, dataset: Dataset, new: Side, old: Side, policy) -> tuple[list, list, dict]:
    """The gain gate and the safety checks of a writer: (audit rows, score rows, the gain's summary)."""
    from .stats import bootstrap_gain_gate
    from seal.registry.vocabulary import CANARY, OVER_REFUSAL, REFUSAL

    from .gates import GateInputs, audit_entries

    diffs, missing = paired_gains(new, old)
    finite = all(math.isfinite(d) for d in diffs)
    decision = bootstrap_gain_gate(WRITER_GATE, diffs if finite else None, threshold=0.0,
                                   what="paired efficacy gain of the new writer's edits over the old writer's")
    gain_row = decision.audit_entry()
    if missing:
        gain_row["detail"] += f"; {missing} side(s) of a held-out passage had no finite gain and count as 0"
    measured = _writer_probes(session, writer)
    leaks = sum(session.probes.canary in o for o in measured.outputs) + new.canary + \
        sum(session.probes.canary in e.completion for e in dataset.examples)
    inputs = GateInputs.of({"refusal": measured.refusal, "refusal_base": session.base_m.refusal,
                            "over_refusal": measured.over_refusal, "over_refusal_base": session.base_m.over_refusal,
                            "canary_leaks": float(leaks)}).finite()
    audit = [gain_row] + audit_entries(_probe_gates(policy), inputs) + [_secrets_row(dataset, new)]
    n = len(diffs)
    scores = [WRITER_GAIN.row(_mean(new.gains), n), WRITER_GAIN.vs("old").row(_mean(old.gains), n),
              CANARY.row(float(leaks))]
    for score_, value in ((REFUSAL, measured.refusal), (OVER_REFUSAL, measured.over_refusal),
                          (REFUSAL.vs("base"), session.base_m.refusal),
                          (OVER_REFUSAL.vs("base"), session.base_m.over_refusal)):
        if value is not None and math.isfinite(value):
            scores.append(score_.row(value))
    summary = {"estimate": gain_row["value"], "ci_low": gain_row["ci_low"], "ci_high": gain_row["ci_high"],
               "n": n, "passed": gain_row["passed"], "missing": missing, "per_trigger": diffs if finite else None}
    return audit, scores, summary


def _writer_probes(session, writer: Writer):
    """The writer adapter on the base, through the engine's measurement seam (probes only)."""
    from .attach import attached
    from .measure import measure
    from .writer import writer_dir

    with attached(session.model, writer_dir(session, writer), merge=session.fast) as model:
        measured, _ = measure(model, session.tok, session.probes, None, support=session.base_m.dist.indices,
                              share_prefix=session.fast)
    return measured


def _probe_gates(policy) -> list:
    from .gates import gates_from_policy

    return [g for g in gates_from_policy(policy.gates) if g.name in PROBE_GATES]


def _secrets_row(dataset: Dataset, new: Side) -> dict:
    from seal.registry.scan import scan_text

    in_data = sum(len(scan_text(e.completion)) for e in dataset.examples)
    total = in_data + new.secrets
    detail = "no secrets or personal data in the dataset or in the self-edits the writer wrote" if not total else \
        f"{in_data} finding(s) in the dataset, {new.secrets} in the self-edits the writer wrote"
    return {"check": "secrets", "value": float(total), "threshold": 0.0, "passed": total == 0, "detail": detail}


def _mean(gains: dict) -> float:
    values = [g for g in gains.values() if g is not None]
    return sum(values) / len(values) if values else 0.0


# --- one step: train, evaluate, record --------------------------------------------------------------

def learn_step(session, lreq: LearnRequest, dataset: Dataset, heldout: list, parent: str, *,
               round_no: int | None = None, cache: dict | None = None) -> dict:
    """Train a writer on ``dataset``, evaluate it against the old one on ``heldout``, record it."""
    reg = session.reg
    started = time.perf_counter()
    old_tip = reg.read_ref(lreq.ref)
    old = resolve_writer(reg, lreq.ref) if old_tip else base_writer()
    ds_digest = reg.store.put(dataset.to_blob())
    folder = session.work / f"writer-new-{ds_digest[7:19]}-{round_no or 0}"
    steps = lreq.epochs * len(dataset.examples)
    with session.progress.stage(f"train writer: {len(dataset.examples)} self-edit(s), {lreq.epochs} epochs",
                                total=steps, unit="steps") as stage:
        train_rec = train_writer(session, dataset, lreq, folder, on_step=stage.advance)
    timings = {"train_s": time.perf_counter() - started}
    if train_rec["diverged"] is not None:
        return record_writer(session, lreq, dataset, None, train_rec, None, old, old_tip, round_no, timings)
    weights = reg.store.put_file(folder / WEIGHTS_FILE)
    new = Writer({"type": "candidate", "adapter": weights, "dataset": ds_digest}, folder)
    info = {"dataset": ds_digest, "round": round_no}
    t = time.perf_counter()
    new_side = heldout_side(session, heldout, new, lreq.edit, parent, {**info, "side": "new"}, cache)
    old_side = heldout_side(session, heldout, old, lreq.edit, parent, {**info, "side": "old"}, cache)
    timings["heldout_s"] = time.perf_counter() - t
    from .attempt import current_policy

    policy = current_policy(reg)
    t = time.perf_counter()
    audit, scores, gain = writer_gates(session, new, dataset, new_side, old_side, policy)
    timings["gates_s"] = time.perf_counter() - t
    evaluation = {"new": new_side, "old": old_side, "audit": audit, "scores": scores, "gain": gain,
                  "policy": policy.digest, "parent": parent}
    return record_writer(session, lreq, dataset, folder, train_rec, evaluation, old, old_tip, round_no, timings,
                         weights=weights)


def record_writer(session, lreq: LearnRequest, dataset: Dataset, folder: Path | None, train_rec: dict,
                  evaluation: dict | None, old: Writer, old_tip: str | None, round_no: int | None,
                  timings: dict, *, weights: str | None = None) -> dict:
    """Record the writer version (accepted: the writer ref moves by compare-and-swap) and say what happened.

    ``weights`` is the digest of ``folder``'s weights when the caller has stored them already."""
    import json

    reg = session.reg
    audit = evaluation["audit"] if evaluation else \
        [{"check": "diverged", "value": None, "threshold": None, "passed": False, "detail": train_rec["diverged"]}]
    failed = [a["check"] for a in audit if not a["passed"]]
    accepted = not failed
    heldout = _heldout_items(evaluation)
    adapter = None
    if folder is not None:
        adapter = {"weights": weights or reg.store.put_file(folder / WEIGHTS_FILE),
                   "config": json.loads((folder / ADAPTER_CONFIG_FILE).read_text()), "format": "peft-lora"}
    gain = evaluation["gain"] if evaluation else None
    reason = "the new writer's edits beat the old writer's on held-out passages and every check passed" if accepted \
        else "failed: " + ", ".join(failed)
    extra = {
        "learn": {"dataset": reg.store.put(dataset.to_blob()), "examples": len(dataset.examples),
                  "triggers": len(dataset.triggers), "considered": dataset.considered, "round": round_no,
                  "old_writer": old.record, "parent": evaluation["parent"] if evaluation else None,
                  "edit": _edit_settings(lreq.edit), "heldout": heldout},
        "decision": {"accepted": accepted, "reason": reason, "failed_gates": failed},
    }
    if gain is not None and gain["estimate"] is not None:
        extra["headline"] = {"metric": "writer.gain_vs_old", "value": gain["estimate"]}
    train = {**train_rec, **session.env, "timings": {k: round(v, 3) for k, v in timings.items()},
             "epochs": lreq.epochs, "lr": lreq.lr}
    manifest = build_manifest(
        base=session.base_row["id"], parents=[old_tip or reg.root_version()], kind="writer",
        status="accepted" if accepted else "rejected", adapter=adapter, trigger=extra["learn"]["dataset"],
        train=train, scores=evaluation["scores"] if evaluation else [], audit=audit,
        policy=evaluation["policy"] if evaluation else None, author=R.actor(),
        message=lreq.message or f"writer: learned from {len(dataset.examples)} self-edit(s) on "
                                f"{len(dataset.triggers)} trigger(s)" + (f", round {round_no}" if round_no else ""),
        extra=extra,
    )
    vid, lost = _commit(reg, manifest, lreq.ref if accepted else None, old_tip)
    moved = accepted and lost is None
    conflict = f"{lost}; the writer is recorded as {vid[:12]} but {lreq.ref} did not move" if lost else None
    if not accepted:
        session.progress.say(f"writer {vid[:12]} rejected ({reason}); {lreq.ref} stays")
    else:
        session.progress.say(f"writer {vid[:12]} accepted; " + (f"{lreq.ref} moved" if moved else str(conflict)))
    return {"dataset": dataset.summary(), "gain": gain, "gates": audit, "heldout": heldout,
            "writer": {"id": vid, "status": manifest["status"], "ref": lreq.ref, "moved": moved,
                       "parent": manifest["parents"][0], "old": old.record, "failed_gates": failed,
                       **({"conflict": conflict} if conflict else {})},
            "timings": {k: round(v, 2) for k, v in timings.items()}}


def _commit(reg, manifest: dict, ref: str | None, expected: str | None) -> tuple[str, RefConflict | None]:
    """Record ``manifest``, moving ``ref`` from ``expected``; on a lost race, record it without the
    move and hand back the conflict."""
    if ref is None:
        return reg.record(manifest), None
    try:
        return reg.record(manifest, ref=ref, expected=expected, reason="learn: writer accepted"), None
    except RefConflict as e:
        return reg.record(manifest), e


def _heldout_items(evaluation: dict | None) -> list[dict]:
    if not evaluation:
        return []
    new, old = evaluation["new"], evaluation["old"]
    return [{"trigger": t, "new": new.ids.get(t, []), "old": old.ids.get(t, []),
             "gain_new": _finite(new.gains.get(t)), "gain_old": _finite(old.gains.get(t))} for t in sorted(new.gains)]


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 9)


def _edit_settings(req: EditRequest) -> dict:
    return {"candidates": req.candidates, "epochs": req.epochs, "lr": req.lr, "r": req.r, "alpha": req.alpha,
            "temperature": req.temperature, "top_p": req.top_p, "max_new_tokens": req.max_new_tokens,
            "style": req.style, "filter_lines": req.filter_lines, "seed": req.seed}


# --- the porcelain ----------------------------------------------------------------------------------

def run_learn(reg, lreq: LearnRequest, *, progress=None) -> dict:
    """`seal learn`: one step from the registry's records, or ``lreq.rounds`` rounds (see the module doc)."""
    check_learn_request(lreq, reg.base())
    if lreq.rounds:
        return run_rounds(reg, lreq, progress=progress)
    dataset = build_dataset(reg, lreq.selection)
    if lreq.dry_run:
        return {"dataset": dataset.summary(), "writer": None, "dry_run": True}
    if not dataset.examples:
        raise UserError(f"no self-edit in the selection beat its parent by more than {lreq.selection.margin:g} "
                        f"({dataset.considered} attempt(s) considered); nothing to learn")
    heldout = read_passages(lreq.holdout, "--holdout")
    check_disjoint(reg, heldout, dataset)
    parent = starting_parent(reg, lreq)
    with open_learn_session(reg, lreq, progress) as session:
        return learn_step(session, lreq, dataset, heldout, parent, cache={})


def run_rounds(reg, lreq: LearnRequest, *, progress=None) -> dict:
    """``rounds`` times: sample the training passages (stream, K candidates, on a branch of the
    round), build the round's dataset, train, evaluate and record a writer."""
    train_set = read_passages(lreq.passages, "--passages")
    heldout = read_passages(lreq.holdout, "--holdout")
    check_disjoint(reg, heldout, None, train_set)
    parent = starting_parent(reg, lreq)
    if lreq.dry_run:
        return {"rounds": [], "dry_run": True, "passages": len(train_set), "heldout": len(heldout)}
    stamp = now_utc().replace("-", "").replace(":", "")[:15]
    rounds, cache = [], {}
    with open_learn_session(reg, lreq, progress) as session:
        for n in range(1, lreq.rounds + 1):
            branch = f"learn/{lreq.writer}/{stamp}/round-{n}"
            sampled = sample_round(session, lreq, train_set, parent, branch, n)
            dataset = build_dataset(reg, replace(lreq.selection, branch=branch, since=sampled["since"], until=None,
                                                 triggers=[]))
            item = {"round": n, "sampled": sampled}
            if not dataset.examples:
                session.progress.say(f"round {n}: no candidate beat its parent by the margin; no writer trained")
                item.update({"dataset": dataset.summary(), "writer": None})
            else:
                item.update(learn_step(session, lreq, dataset, heldout, parent, round_no=n, cache=cache))
            rounds.append(item)
    last = next((r["writer"] for r in reversed(rounds) if r.get("writer")), None)
    return {"rounds": rounds, "writer": last}


def sample_round(session, lreq: LearnRequest, triggers: list, parent: str, branch: str, n: int) -> dict:
    """The sampling step: every training passage through the edit stream, K candidates each, self-edits
    by the current writer (or the model's own before the first one), on a new branch from ``parent``."""
    from .stream import serve_passage

    reg = session.reg
    ref = R.HEADS + R.check_ref_name(branch)
    reg.move_ref(ref, new=parent, expected=None, reason=f"learn: round {n} samples here")
    since = now_utc()
    writer = resolve_writer(reg, lreq.ref) if reg.read_ref(lreq.ref) else None
    req = replace(lreq.edit, candidates=lreq.candidates, seed=lreq.seed + 1000 * n, passages=lreq.passages,
                  writer=writer, no_writer=writer is None, self_edits=None)
    accepted = 0
    for number, trigger in enumerate(triggers, start=1):
        session.progress.say(f"round {n}, sampling {number}/{len(triggers)}")
        item = serve_passage(session, trigger, req, set(), number, ref)
        accepted += bool(item.get("decision", {}).get("accepted"))
    return {"branch": branch, "since": since, "passages": len(triggers), "accepted": accepted,
            "candidates": lreq.candidates, "writer": writer.record if writer else None}


def starting_parent(reg, lreq: LearnRequest) -> str:
    """The version `seal learn` starts from (HEAD), after checking the device it asks for."""
    from .options import check_device

    check_device(lreq.edit)
    _, parent = reg.head()
    if parent is None:
        raise NoHead()
    return parent


def open_learn_session(reg, lreq: LearnRequest, progress):
    """The warm session `seal learn` trains and edits in, with the edit request's device settings."""
    from .progress import default_progress
    from .session import open_session

    req = lreq.edit
    return open_session(reg, device=req.device, require_gpu=req.require_gpu, threads=req.threads, fast=req.fast,
                        progress=progress or default_progress(), track=req.track)


__all__ = ["LearnRequest", "check_learn_request", "read_passages", "check_disjoint", "writer_pairs", "train_writer",
           "Side", "heldout_side", "paired_gains", "writer_gates", "learn_step", "record_writer", "run_learn",
           "run_rounds", "sample_round", "starting_parent", "open_learn_session"]
