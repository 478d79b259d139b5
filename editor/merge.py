"""Combining lines of adaptation: `seal merge` and `seal consolidate`.

Both use PEFT's ``add_weighted_adapter`` on one loaded base, then score and gate the result like
an edit and record it, accepted or rejected, through :mod:`seal.editor.attempt`.

    >>> run_merge(repo, ["main", "exp"], method="cat")                 # doctest: +SKIP
    >>> run_consolidate(repo, "main~3..main", rank=16)                  # doctest: +SKIP

Refused before any model is loaded, with a one-line message: inputs on different bases; methods
that need equal ranks when ranks differ; adapter types where PEFT's merge is known to be wrong
(DoRA, rsLoRA, a trained LoRA bias).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from seal.registry.adapters import ADAPTER_CONFIG_FILE
from seal.registry.bases import get_base
from seal.registry.errors import UserError
from seal.registry.repo import Registry
from seal.registry.store import refs as R
from seal.registry.store.graph import first_parent_line
from seal.registry.store.objects import canonical_json
from seal.registry.store.revisions import resolve_revision
from seal.registry.store.versions import load_manifest
from seal.registry.vocabulary import EFFICACY_F1, EFFICACY_NLL

from .attempt import measure_parent_attached, open_attempt, run_attempt, single_candidate
from .trigger import Trigger, efficacy_spec, read_jsonl

METHODS = ("linear", "cat", "svd", "ties", "dare_ties", "dare_linear", "magnitude_prune")
EQUAL_RANK = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")
NEEDS_DENSITY = ("ties", "dare_ties", "dare_linear", "magnitude_prune")


def check_mergeable(manifests: dict[str, dict], method: str, base_id: str) -> None:
    """Refuse what PEFT cannot merge correctly, naming what to do instead."""
    if method not in METHODS:
        raise UserError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
    for vid, m in manifests.items():
        if m["base"] != base_id:
            raise UserError(f"{vid[:12]} is on another base ({m['base'][:12]}); only adapters on one base can merge")
        if not m.get("adapter"):
            raise UserError(f"{vid[:12]} is the bare base ({m['kind']}); it has no adapter to merge")
        cfg = m["adapter"]["config"]
        if cfg.get("use_dora"):
            raise UserError(f"{vid[:12]} is a DoRA adapter; PEFT's add_weighted_adapter ignores the magnitude vector, so the merge would be wrong")
        if cfg.get("use_rslora"):
            raise UserError(f"{vid[:12]} uses rsLoRA; PEFT's merged adapter rescales by alpha/r, not alpha/sqrt(r), so the merge would be wrong")
        if cfg.get("lora_bias") or cfg.get("bias", "none") != "none":
            raise UserError(f"{vid[:12]} trains biases (bias={cfg.get('bias')}, lora_bias={cfg.get('lora_bias')}); PEFT does not merge them")
    ranks = {vid: max([m["adapter"]["config"].get("r", 0), *(m["adapter"]["config"].get("rank_pattern") or {}).values()])
             for vid, m in manifests.items()}
    if method in EQUAL_RANK and len(set(ranks.values())) > 1:
        shown = ", ".join(f"{vid[:8]} r={r}" for vid, r in ranks.items())
        raise UserError(f"--method {method} needs equal ranks but the inputs have {shown}; use --method cat or --method svd")


def combine(session, dirs: list[Path], weights: list[float], method: str, out: Path, *, density: float | None,
            svd_rank: int | None) -> Path:
    """PEFT's add_weighted_adapter over ``dirs`` on the session's base; the result is saved in ``out``."""
    from peft import PeftModel

    from .train import quiet_peft, detach_adapters

    with quiet_peft():
        model = PeftModel.from_pretrained(session.base.model, str(dirs[0]), adapter_name="in0", is_trainable=False)
    try:
        for i, d in enumerate(dirs[1:], start=1):
            with quiet_peft():
                model.load_adapter(str(d), adapter_name=f"in{i}", is_trainable=False)
        kwargs = {"svd_rank": svd_rank} if method == "svd" else {}
        if method in NEEDS_DENSITY:
            kwargs["density"] = density
        model.add_weighted_adapter(adapters=[f"in{i}" for i in range(len(dirs))], weights=weights,
                                   adapter_name="merged", combination_type=method, **kwargs)
        tmp = out.parent / f"{out.name}.save"
        model.save_pretrained(str(tmp), selected_adapters=["merged"], safe_serialization=True)
        saved = tmp / "merged" if (tmp / "merged").is_dir() else tmp
        shutil.move(str(saved), str(out))
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        detach_adapters(model)
    cfg_path = out / ADAPTER_CONFIG_FILE
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = session.base.name
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


def eval_union(repo: Registry, manifests: list[dict]) -> dict:
    """The union of the inputs' efficacy sets: their eval QA items, else their passages' NLL."""
    qa, texts, seen = [], [], set()
    for m in manifests:
        if m.get("eval") and repo.store.has(m["eval"]):
            items = _load_eval_blob(repo.store.get(m["eval"]))
            if isinstance(items, dict) and "qa" in items:
                items = items["qa"] or []
            elif isinstance(items, dict):
                texts += [t for t in items.get("texts", []) if t not in seen and not seen.add(t)]
                items = []
            for item in items:
                key = json.dumps(item, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    qa.append(item)
        elif m.get("trigger") and repo.store.has(m["trigger"]) and (m.get("trigger_info") or {}).get("kind") == "passage":
            raw = repo.store.get(m["trigger"])
            trigger = _passage_from_bytes(raw)
            spec = efficacy_spec(trigger)
            for t in spec.get("texts", []):
                if t not in seen:
                    seen.add(t)
                    texts.append(t)
    if qa:
        return {"qa": qa}
    if texts:
        return {"texts": texts}
    return {}


def _load_eval_blob(raw: bytes):
    """An eval blob: the user's JSONL file as given, a JSON list, or a stored {"qa"|"texts"} spec."""
    text = raw.decode("utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _passage_from_bytes(raw: bytes) -> Trigger:
    text = raw.decode("utf-8")
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and isinstance(doc.get("context", doc.get("passage")), str):
            return Trigger(kind="passage", raw=raw, text=doc.get("context", doc.get("passage")),
                           title=doc.get("title"), passage=doc.get("context", doc.get("passage")).strip())
    except json.JSONDecodeError:
        pass
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        return Trigger(kind="passage", raw=raw, text=text, title=lines[0][2:].strip(), passage="\n".join(lines[1:]).strip())
    return Trigger(kind="passage", raw=raw, text=text, passage=text.strip())


def _parse_weights(weights: str | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    try:
        values = [float(w) for w in weights.split(",")]
    except ValueError:
        raise UserError(f"--weights must be numbers separated by commas, like 0.5,0.5; got {weights!r}") from None
    if len(values) != n:
        raise UserError(f"--weights has {len(values)} value(s) but there are {n} inputs; give one per input")
    return values


def _check_device(device: str, require_gpu: bool) -> None:
    from .device import pick_device
    from .options import check_device_name

    check_device_name(device)
    pick_device(device, require_gpu=require_gpu)


def run_merge(repo: Registry, revs: list[str], *, method: str = "linear", weights: str | None = None,
              density: float | None = None, svd_rank: int | None = None, eval_file: Path | None = None,
              message: str = "", device: str = "auto", require_gpu: bool = False, track: bool = True,
              answer_tokens: int = 48, threads: int | None = None, progress=None) -> dict:
    """Merge two or more versions with PEFT, evaluate and gate the result, and record it."""
    from .options import check_device_name
    from .progress import default_progress
    from .session import open_session
    from .stages import timed

    check_device_name(device)
    if len(revs) < 2:
        raise UserError("give at least two revisions to merge")
    if density is not None and not 0 < density <= 1:
        raise UserError("--density must be in (0, 1]")
    if svd_rank is not None and svd_rank < 1:
        raise UserError("--svd-rank must be at least 1")
    with repo.read() as conn:
        ids = [resolve_revision(conn, r) for r in revs]
        if len(set(ids)) != len(ids):
            raise UserError("the same version is named twice; give distinct revisions")
        ref, head = R.head_state(conn)
        base_row = get_base(conn, repo.base_id())
        manifests = {vid: load_manifest(conn, vid) for vid in ids}
    check_mergeable(manifests, method, base_row["id"])
    w = _parse_weights(weights, len(ids))
    if method in NEEDS_DENSITY and density is None:
        density = 0.5
    spec = {"qa": read_jsonl(eval_file, "eval", ("question", "answer|answers"))[0]} if eval_file else \
        eval_union(repo, list(manifests.values()))
    if not spec:
        raise UserError("none of the inputs carries an eval set or a passage; pass --eval FILE.jsonl")
    # HEAD's line continues through the merge: it is the first parent whenever it is an input.
    weight_of = dict(zip(ids, w))
    if head in ids:
        ids.remove(head)
        ids.insert(0, head)
    w = [weight_of[vid] for vid in ids]
    _check_device(device, require_gpu)
    progress = progress or default_progress()
    recipe = {"method": method, "weights": w, "density": density, "svd_rank": svd_rank, "inputs": ids}
    with open_session(repo, device=device, require_gpu=require_gpu, threads=threads, progress=progress,
                      track=track) as session:
        attempt = open_attempt(session, "merge", ids, ref=ref if head in ids else None, expected=head, spec=spec,
                               message=message or f"merge {', '.join(r for r in revs)} ({method})",
                               title=f"{', '.join(revs)} ({method})", answer_tokens=answer_tokens,
                               parent_manifest=manifests[ids[0]],
                               extra={"merge": recipe, "eval": repo.store.put(canonical_json(spec))})

        def merged() -> list:
            dirs = [session.parent(vid, manifests[vid]).adapter_dir for vid in ids]
            with timed(attempt, "merge_s"), progress.stage(f"merge {len(ids)} adapters with {method}") as stage:
                measure_parent_attached(session, attempt, stage)
                out = combine(session, dirs, w, method, session.work / "merged", density=density, svd_rank=svd_rank)
            return [single_candidate(session, attempt, out, {"source": "merge", "merge": recipe})]

        return run_attempt(session, attempt, merged)


def chain_of(conn, spec: str) -> tuple[list[str], str | None]:
    """``A..B``: the first-parent chain from B back to (not including) A, oldest first."""
    if ".." not in spec:
        raise UserError(f"give a range like main~3..main, not {spec!r}")
    start_rev, end_rev = spec.split("..", 1)
    start = resolve_revision(conn, start_rev) if start_rev else None
    end = resolve_revision(conn, end_rev or "HEAD")
    chain = first_parent_line(conn, end)
    if start is not None:
        if start not in chain:
            raise UserError(f"{start_rev} is not on the first-parent line of {end_rev or 'HEAD'}; give an ancestor")
        chain = chain[:chain.index(start)]
    return list(reversed(chain)), start


def run_consolidate(repo: Registry, range_spec: str, *, rank: int | None = None, message: str = "",
                    device: str = "auto", require_gpu: bool = False, track: bool = True,
                    answer_tokens: int = 48, threads: int | None = None, progress=None) -> dict:
    """Fold a chain of accepted edits into one adapter of bounded rank (SVD), gated so that every
    folded edit keeps its efficacy within the policy's ``consolidate_efficacy_drop_max``."""
    from .options import check_device_name
    from .progress import default_progress
    from .session import open_session
    from .stages import timed

    check_device_name(device)
    if rank is not None and rank < 1:
        raise UserError("--rank must be at least 1")
    with repo.read() as conn:
        chain, _ = chain_of(conn, range_spec)
        ref, head = R.head_state(conn)
        base_row = get_base(conn, repo.base_id())
        manifests = {vid: load_manifest(conn, vid) for vid in chain}
    if len(chain) < 2:
        raise UserError(f"{range_spec} holds {len(chain)} version(s); consolidation folds two or more")
    for vid, m in manifests.items():
        if m["status"] != "accepted" or m["kind"] == "root":
            raise UserError(f"{vid[:12]} is a {m['status']} {m['kind']}; consolidate folds accepted edits only")
    tip = chain[-1]
    check_mergeable({tip: manifests[tip]}, "svd", base_row["id"])
    rank = rank or max(max([m["adapter"]["config"].get("r", 0), *(m["adapter"]["config"].get("rank_pattern") or {}).values()])
                       for m in manifests.values())
    specs = {vid: eval_union(repo, [m]) for vid, m in manifests.items()}
    union = eval_union(repo, list(manifests.values()))
    if not union:
        raise UserError("the folded versions carry no eval set or passage to check efficacy on")
    _check_device(device, require_gpu)
    progress = progress or default_progress()
    recipe = {"method": "svd", "rank": rank, "range": range_spec, "folded": chain}
    with open_session(repo, device=device, require_gpu=require_gpu, threads=threads, progress=progress,
                      track=track) as session:
        attempt = open_attempt(session, "consolidate", [tip, chain[0]], ref=ref if head == tip else None,
                               expected=head, spec=union, message=message or f"consolidate {range_spec} into rank {rank}",
                               title=range_spec, answer_tokens=answer_tokens, parent_manifest=manifests[tip],
                               extra={"consolidate": recipe, "eval": repo.store.put(canonical_json(union))})

        def folded() -> list:
            with timed(attempt, "merge_s"), \
                    progress.stage(f"consolidate {len(chain)} versions into rank {rank} (svd)") as stage:
                measure_parent_attached(session, attempt, stage)
                # The tip's adapter already holds the whole chain (each edit trains on from its parent), so
                # folding is an SVD of its update; PEFT needs two inputs for svd, so it gets the tip twice.
                tip_dir = attempt.parent.adapter_dir
                out = combine(session, [tip_dir, tip_dir], [0.5, 0.5], "svd", session.work / "folded", density=None,
                              svd_rank=rank)
            with timed(attempt, "evaluate_s"):
                attempt.extra_audit = _folded_checks(session, out, chain, manifests, specs, answer_tokens,
                                                     attempt.policy.gates.get("consolidate_efficacy_drop_max"))
            # Folding cannot beat the tip it compresses, so the efficacy-gain gate gives way to the
            # per-version checks above.
            attempt.gates = [g for g in attempt.gates if g.name != "efficacy_gain"]
            return [single_candidate(session, attempt, out, {"source": "consolidate", "consolidate": recipe})]

        return run_attempt(session, attempt, folded)


def _folded_checks(session, out: Path, chain: list[str], manifests: dict, specs: dict, answer_tokens: int,
                   drop_max) -> list[dict]:
    """Each folded version's efficacy on its own data, as recorded against the folded adapter's."""
    from .attach import attached
    from .measure import measure_efficacy

    rows = []
    with attached(session.model, out, merge=session.fast) as model:
        for vid in chain:
            if not specs[vid]:
                continue
            nll = EFFICACY_NLL.of(manifests[vid])
            recorded = EFFICACY_F1.of(manifests[vid]) if specs[vid].get("qa") else (None if nll is None else -nll)
            if recorded is None:
                continue
            now = measure_efficacy(model, session.tok, specs[vid], answer_tokens, share_prefix=session.fast).gate
            drop = recorded - now
            rows.append({
                "check": f"consolidate_efficacy[{vid[:12]}]", "value": drop, "threshold": drop_max,
                "passed": drop_max is None or drop <= drop_max,
                "detail": f"efficacy of folded version {vid[:12]}: {recorded:.4g} -> {now:.4g} (drop {drop:.4g})",
            })
    return rows
