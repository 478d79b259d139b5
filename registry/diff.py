"""What changed between two versions: weights, adapter config, base, scores, gates and data.

Weights are compared in rank space by :mod:`seal.registry.lora_math`, straight from the adapter
blobs in the object store, so no dense ``d_out × d_in`` matrix is built and torch is never
imported. A version without an adapter (the root) counts as the zero update.

>>> report = diff_versions(Registry.open(), "HEAD")          # HEAD against its first parent  # doctest: +SKIP
>>> report["differs"], report["weights"]["total"]["diff_norm"]  # doctest: +SKIP
(True, 0.0123)

Every figure is A relative to B: ``diff_norm = ‖ΔW_A − ΔW_B‖_F`` and ``delta = score_A − score_B``.
Only what changed is reported unless ``include_all``; ``differs`` is true exactly when something
is reported without ``include_all``, which is what ``seal diff --exit-code`` returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from .bases import get_base
from .errors import UserError
from .graph import ancestors, parents_of
from .lora_math import compare_adapters, load_lora_factors
from .objects import parse_manifest
from .revisions import resolve_revision
from .sql import Conn
from .versions import load_manifest

#: Adapter config fields that change what an adapter is or how it scales.
CONFIG_FIELDS = (
    "r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern",
)
#: How much of a trigger or self-edit blob the data section quotes.
PREVIEW_LINES = 3
PREVIEW_CHARS = 120
_PREVIEW_BYTES = 8192


def diff_versions(repo, a: str, b: str | None = None, *, include_all: bool = False) -> dict:
    """Compare version ``a`` with ``b`` (default: ``a``'s first parent; nothing for a root).

    Returns one JSON-ready document: ``a``, ``b`` (None when diffing a root against nothing),
    ``differs``, and the sections ``weights``, ``config``, ``base``, ``scores``, ``gates`` and
    ``data``. Raises :class:`UserError` for an unknown revision.

        >>> diff_versions(repo, "main", "exp")["scores"]                       # doctest: +SKIP
        [{'suite': 'qa', 'metric': 'acc', 'against': None, 'a': 0.61, 'b': 0.55, 'delta': 0.06, ...}]
    """
    with repo.read() as conn:
        a_id = resolve_revision(conn, a)
        if b is None:
            ps = parents_of(conn, a_id)
            b_id = ps[0] if ps else None
        else:
            b_id = resolve_revision(conn, b)
        ma = load_manifest(conn, a_id)
        mb = load_manifest(conn, b_id) if b_id else None
        base = _base_section(conn, ma, mb)
        data = _data_section(repo, conn, a_id, b_id, include_all)

    weights = _weights_section(repo, a_id, ma, b_id, mb, include_all)
    config = _config_section(ma, mb, include_all)
    scores = _scores_section(ma, mb, include_all)
    gates = _gates_section(ma, mb, include_all)
    differs = (
        weights["changed"]
        or any(row["changed"] for row in config)
        or base["changed"]
        or any(row["changed"] for row in scores)
        or any(row["changed"] for row in gates)
        or any(item["has_data"] for item in data)
    )
    return {
        "a": _side(a_id, ma),
        "b": _side(b_id, mb) if b_id else None,
        "differs": bool(differs),
        "all": include_all,
        "weights": weights,
        "config": config,
        "base": base,
        "scores": scores,
        "gates": gates,
        "data": data,
    }


def _side(vid: str, manifest: dict) -> dict:
    adapter = manifest.get("adapter") or {}
    return {
        "id": vid,
        "kind": manifest["kind"],
        "status": manifest["status"],
        "created_at": manifest["created_at"],
        "message": manifest.get("message", ""),
        "adapter": adapter.get("weights"),
    }


# --- weights ----------------------------------------------------------------------------------

def _factors(repo, manifest: dict | None, label: str) -> dict:
    adapter = (manifest or {}).get("adapter")
    if not adapter:
        return {}  # the bare base: a zero update
    path = repo.store.path_of(adapter["weights"])
    if not path.exists():
        raise UserError(f"blob {adapter['weights']} is missing from the object store; run `seal verify`")
    try:
        return load_lora_factors((adapter.get("config") or {}, path))
    except UserError as e:
        raise UserError(str(e).replace(str(path), f"the adapter of {label}")) from None


def _same_factors(fa, fb) -> bool:
    return fa is fb or (
        float(fa.scale) == float(fb.scale)
        and fa.A.shape == fb.A.shape and fa.B.shape == fb.B.shape
        and np.array_equal(fa.A, fb.A) and np.array_equal(fa.B, fb.B)
    )


def _exactly_equal(row: dict) -> None:
    # The QR route leaves ~1e-16 of rounding for equal factors; equal bytes mean no change at all.
    row["diff_norm"] = 0.0
    row["norm_b"] = row["norm_a"]
    row["cosine"] = 1.0 if row["norm_a"] > 0.0 else None


def _weights_section(repo, a_id: str, ma: dict, b_id: str | None, mb: dict | None, include_all: bool) -> dict:
    adapter_a = (ma.get("adapter") or {})
    adapter_b = ((mb or {}).get("adapter") or {})
    same_blob = (
        adapter_a.get("weights") == adapter_b.get("weights")
        and adapter_a.get("config") == adapter_b.get("config")
    )
    try:
        fa = _factors(repo, ma, f"A ({a_id[:12]})")
        fb = fa if same_blob else _factors(repo, mb, f"B ({(b_id or '')[:12]})")
        report = compare_adapters(fa, fb)
    except UserError as e:
        # A DoRA adapter or a different base's shapes: no rank-space figures, the rest still diffs.
        return {
            "changed": not same_blob, "skipped": str(e), "modules": [], "layers": [],
            "total": None, "n_changed": None,
        }
    equal = {m for m in set(fa) & set(fb) if _same_factors(fa[m], fb[m])}
    for row in report["modules"]:
        if row["module"] in equal:
            _exactly_equal(row)
    by_layer: dict[Any, list[str]] = {}
    for row in report["modules"]:
        by_layer.setdefault(row["layer"], []).append(row["module"])
    for row in report["layers"]:
        if all(m in equal for m in by_layer.get(row["layer"], [])):
            _exactly_equal(row)
    total = report["total"]
    if all(row["module"] in equal for row in report["modules"]):
        _exactly_equal(total)
    changed_modules = [row for row in report["modules"] if row["diff_norm"] > 0.0]
    return {
        "changed": bool(changed_modules),
        "skipped": None,
        "modules": report["modules"] if include_all else changed_modules,
        "layers": report["layers"] if include_all else [r for r in report["layers"] if r["diff_norm"] > 0.0],
        "total": total,
        "n_changed": len(changed_modules),
    }


# --- config and base --------------------------------------------------------------------------

def _config_value(config: dict | None, field: str) -> Any:
    if config is None:
        return None
    value = config.get(field)
    if field in ("use_rslora", "use_dora"):
        return bool(value)  # PEFT's default is False, so absent and False are the same adapter
    if isinstance(value, (list, tuple, set)):
        return sorted(value) or None
    if isinstance(value, dict):
        return value or None
    return value


def _adapter_config(manifest: dict | None) -> dict | None:
    adapter = (manifest or {}).get("adapter")
    return None if not adapter else (adapter.get("config") or {})


def _config_section(ma: dict, mb: dict | None, include_all: bool) -> list[dict]:
    ca, cb = _adapter_config(ma), _adapter_config(mb)
    rows = []
    for field in CONFIG_FIELDS:
        va, vb = _config_value(ca, field), _config_value(cb, field)
        row = {"field": field, "a": va, "b": vb, "changed": va != vb}
        if include_all or row["changed"]:
            rows.append(row)
    return rows


def _base_of(conn: Conn, base_id: str | None) -> dict | None:
    if base_id is None:
        return None
    try:
        return {"id": base_id, "name": get_base(conn, base_id)["name"]}
    except UserError:
        return {"id": base_id, "name": None}


def _base_section(conn: Conn, ma: dict, mb: dict | None) -> dict:
    a = _base_of(conn, ma["base"])
    b = _base_of(conn, mb["base"]) if mb else None
    return {"a": a, "b": b, "changed": mb is not None and ma["base"] != mb["base"]}


# --- scores and gates -------------------------------------------------------------------------

def _score_key(s: dict) -> tuple:
    return (s.get("suite"), s.get("metric"), s.get("against"))


def _scores_section(ma: dict, mb: dict | None, include_all: bool) -> list[dict]:
    sa = {_score_key(s): s for s in ma.get("scores") or []}
    sb = {_score_key(s): s for s in (mb or {}).get("scores") or []}
    rows = []
    for key in sorted(set(sa) | set(sb), key=lambda k: tuple("" if x is None else str(x) for x in k)):
        a, b = sa.get(key), sb.get(key)
        va = None if a is None else float(a["value"])
        vb = None if b is None else float(b["value"])
        row = {
            "suite": key[0], "metric": key[1], "against": key[2],
            "a": va, "b": vb,
            "delta": None if va is None or vb is None else va - vb,
            "n_a": None if a is None else a.get("n"),
            "n_b": None if b is None else b.get("n"),
        }
        row["changed"] = va != vb or row["n_a"] != row["n_b"]
        if include_all or row["changed"]:
            rows.append(row)
    return rows


def _gate(a: dict | None) -> dict | None:
    if a is None:
        return None
    return {
        "passed": bool(a["passed"]),
        "value": a.get("value"),
        "threshold": a.get("threshold"),
        "detail": a.get("detail", ""),
    }


def _gates_section(ma: dict, mb: dict | None, include_all: bool) -> list[dict]:
    ga = {a["check"]: a for a in ma.get("audit") or []}
    gb = {a["check"]: a for a in (mb or {}).get("audit") or []}
    rows = []
    for check in sorted(set(ga) | set(gb)):
        a, b = _gate(ga.get(check)), _gate(gb.get(check))
        changed = (a is None) != (b is None) or (a is not None and a["passed"] != b["passed"])
        if include_all or changed:
            rows.append({"check": check, "a": a, "b": b, "changed": changed})
    return rows


# --- data -------------------------------------------------------------------------------------

def blob_preview(repo, digest: str, *, lines: int = PREVIEW_LINES) -> dict:
    """A blob's digest and its first ``lines`` lines of text, each cut to ``PREVIEW_CHARS``."""
    if not isinstance(digest, str):
        return {"digest": digest, "lines": [], "missing": False}
    path = repo.store.path_of(digest) if digest.startswith("sha256:") else None
    if path is None or not path.exists():
        return {"digest": digest, "lines": [], "missing": True}
    with open(path, "rb") as f:
        head = f.read(_PREVIEW_BYTES)
    text = head.decode("utf-8", errors="replace")
    shown = [
        line if len(line) <= PREVIEW_CHARS else line[: PREVIEW_CHARS - 1] + "…"
        for line in text.splitlines()[:lines]
    ]
    return {"digest": digest, "lines": shown, "missing": False}


def _data_section(repo, conn: Conn, a_id: str, b_id: str | None, include_all: bool) -> list[dict]:
    """The versions reachable from one side but not the other (git's ``A...B``), newest first."""
    anc_a = ancestors(conn, a_id)
    anc_b = ancestors(conn, b_id) if b_id else set()
    sides = {vid: "a" for vid in anc_a - anc_b}
    sides.update({vid: "b" for vid in anc_b - anc_a})
    ids = list(sides)
    manifests: dict[str, dict] = {}
    created: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        marks = ", ".join("?" for _ in part)
        for vid, text, at in conn.all(f"SELECT id, manifest, created_at FROM versions WHERE id IN ({marks})", part):
            manifests[vid] = parse_manifest(text)
            created[vid] = at
    out = []
    for vid in sorted(ids, key=lambda v: (sides[v] != "a", _desc(created.get(v, "")), v)):
        m = manifests[vid]
        trigger = blob_preview(repo, m["trigger"]) if m.get("trigger") else None
        self_edit = blob_preview(repo, m["self_edit"]) if m.get("self_edit") else None
        has_data = trigger is not None or self_edit is not None
        if not (include_all or has_data):
            continue
        out.append({
            "side": sides[vid], "id": vid, "kind": m["kind"], "status": m["status"],
            "created_at": m["created_at"], "message": m.get("message", ""),
            "trigger": trigger, "self_edit": self_edit, "has_data": has_data,
        })
    return out


def _desc(ts: str) -> tuple:
    return tuple(-ord(c) for c in ts)
