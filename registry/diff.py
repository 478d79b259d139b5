"""What changed from one version to another: weights, adapter config, base, scores, gates and data.

git's order: ``diff_versions(reg, OLD, NEW)`` shows NEW relative to OLD, so every difference is
``new − old`` (``seal diff HEAD~2 HEAD`` shows what the last two edits added), and
``diff_revision(reg, REV)`` compares REV's first parent (old) with REV (new), like
``git show REV``. A version without an adapter (the root) counts as the zero update.

Weights are compared in rank space by :mod:`seal.registry.lora_math`, straight from the adapter
blobs in the object store, so no dense ``d_out × d_in`` matrix is built and torch is never
imported: ``diff_norm = ‖ΔW_new − ΔW_old‖_F``.

>>> report = diff_revision(Registry.open(), "HEAD")       # HEAD's first parent -> HEAD  # doctest: +SKIP
>>> report["summary"]["weights"]["diff_norm"], report["differs"]                         # doctest: +SKIP
(0.0123, True)

The document (schema ``seal.diff/1``, ``schemas/diff.schema.json``) puts a ``summary`` first and
the details after it. Only what changed is listed unless ``include_all``; ``differs`` is true
exactly when something is listed without ``include_all``, which is what ``seal diff
--exit-code`` returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .bases import get_base
from .errors import ObjectDamaged, UserError
from .lora_math import compare_adapters, load_lora_factors
from .previews import first_lines, head_text
from .store.graph import ancestors, parents_of
from .store.revisions import resolve_revision
from .store.sql import Conn
from .store.versions import load_manifest, stored_manifest

SCHEMA_ID = "seal.diff/1"
#: Adapter config fields that change what an adapter is or how it scales.
CONFIG_FIELDS = (
    "r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern",
)
#: How much of a trigger or self-edit blob the data section quotes.
PREVIEW_LINES = 3
PREVIEW_CHARS = 120
#: The data section lists at most this many versions per side (the summary counts them all).
DATA_LIMIT = 50
#: Optional fields of a gate row (statistical gates) that a diff carries along.
GATE_FIELDS = ("value", "threshold", "ci_low", "ci_high", "n", "rule", "detail")


def diff_revision(reg, rev: str, *, include_all: bool = False) -> dict:
    """REV relative to its first parent (nothing for a root): what REV changed."""
    with reg.read() as conn:
        new_id = resolve_revision(conn, rev)
        ps = parents_of(conn, new_id)
        return _diff(reg, conn, ps[0] if ps else None, new_id, include_all)


def diff_versions(reg, old: str | None, new: str, *, include_all: bool = False) -> dict:
    """NEW relative to OLD (``old=None``: against nothing, the bare base). Raises UserError for a bad revision.

        >>> diff_versions(reg, "main", "exp")["scores"]                       # doctest: +SKIP
        [{'suite': 'efficacy', 'metric': 'f1', 'against': None, 'old': 0.55, 'new': 0.61, 'delta': 0.06, ...}]
    """
    with reg.read() as conn:
        old_id = resolve_revision(conn, old) if old is not None else None
        return _diff(reg, conn, old_id, resolve_revision(conn, new), include_all)


def _diff(reg, conn: Conn, old_id: str | None, new_id: str, include_all: bool) -> dict:
    m_new = load_manifest(conn, new_id)
    m_old = load_manifest(conn, old_id) if old_id else None
    base = _base_section(conn, m_old, m_new)
    data = _data_section(reg, conn, old_id, new_id, include_all)
    weights = _weights_section(reg, old_id, m_old, new_id, m_new, include_all)
    config = _config_section(m_old, m_new, include_all)
    scores = _scores_section(m_old, m_new, include_all)
    gates = _gates_section(m_old, m_new, include_all)
    differs = (
        weights["changed"] or base["changed"]
        or any(row["changed"] for section in (config, scores, gates) for row in section)
        or any(item["has_data"] for item in data["versions"])
    )
    return {
        "schema": SCHEMA_ID,
        "old": _side(old_id, m_old) if old_id else None,
        "new": _side(new_id, m_new),
        "differs": bool(differs),
        "all": include_all,
        "summary": _summary(weights, config, base, scores, gates, data),
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


def _summary(weights: dict, config: list, base: dict, scores: list, gates: list, data: dict) -> dict:
    """The headline of a diff: what a reader needs before the module-by-module detail."""
    total = weights["total"] or {}
    return {
        "weights": {
            "modules_changed": weights["n_changed"], "modules": total.get("n_modules"),
            "diff_norm": total.get("diff_norm"), "norm_old": total.get("norm_old"), "norm_new": total.get("norm_new"),
            "compared": weights["skipped"] is None,
        },
        "config_changed": [row["field"] for row in config if row["changed"]],
        "base_changed": base["changed"],
        # The version's own values; rows against a reference stay in the details.
        "scores": [{k: row[k] for k in ("suite", "metric", "against", "old", "new", "delta")}
                   for row in scores if row["changed"] and row["against"] is None and row["delta"] is not None],
        "gates_changed": [{"check": row["check"], "old": _verdict(row["old"]), "new": _verdict(row["new"])}
                          for row in gates if row["changed"]],
        "versions_only_in_new": data["only_in_new"],
        "versions_only_in_old": data["only_in_old"],
    }


def _verdict(gate: dict | None) -> str | None:
    return None if gate is None else ("pass" if gate["passed"] else "fail")


# --- weights ----------------------------------------------------------------------------------

def _factors(reg, manifest: dict | None, label: str) -> dict:
    adapter = (manifest or {}).get("adapter")
    if not adapter:
        return {}  # the bare base: a zero update
    if not reg.store.has(adapter["weights"]):
        raise ObjectDamaged(f"blob {adapter['weights']} is missing from the object store; run `seal verify`")
    if not reg.store.check(adapter["weights"]):  # a damaged blob would give wrong numbers, not an error
        raise ObjectDamaged(f"the weights of {label} ({adapter['weights'][:19]}…) no longer match their "
                            f"digest; run `seal verify`")
    path = reg.store.path_of(adapter["weights"])
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


def _oriented(row: dict, exact: bool) -> dict:
    """A lora_math row (a = new, b = old) in the diff's words; equal bytes are exactly zero apart."""
    out = {k: v for k, v in row.items() if k not in ("norm_a", "norm_b")}
    out["norm_old"], out["norm_new"] = row["norm_b"], row["norm_a"]
    if exact:
        # The QR route leaves ~1e-16 of rounding for equal factors; equal bytes mean no change at all.
        out.update(diff_norm=0.0, norm_old=row["norm_a"], cosine=1.0 if row["norm_a"] > 0.0 else None)
    return out


def _weights_section(reg, old_id: str | None, m_old: dict | None, new_id: str, m_new: dict,
                     include_all: bool) -> dict:
    adapter_new, adapter_old = m_new.get("adapter") or {}, (m_old or {}).get("adapter") or {}
    same_blob = (adapter_new.get("weights") == adapter_old.get("weights")
                 and adapter_new.get("config") == adapter_old.get("config"))
    try:
        f_new = _factors(reg, m_new, f"new ({new_id[:12]})")
        f_old = f_new if same_blob else _factors(reg, m_old, f"old ({(old_id or '')[:12]})")
        report = compare_adapters(f_new, f_old)
    except ObjectDamaged:
        raise
    except UserError as e:
        # A DoRA adapter or a different base's shapes: no rank-space figures, the rest still diffs.
        return {"changed": not same_blob, "skipped": str(e), "modules": [], "layers": [],
                "total": None, "n_changed": None}
    equal = {m for m in set(f_new) & set(f_old) if _same_factors(f_new[m], f_old[m])}
    modules = [_oriented(row, row["module"] in equal) for row in report["modules"]]
    members: dict[Any, list[str]] = {}
    for row in modules:
        members.setdefault(row["layer"], []).append(row["module"])
    layers = [_oriented(row, all(m in equal for m in members.get(row["layer"], []))) for row in report["layers"]]
    total = _oriented(report["total"], all(row["module"] in equal for row in modules))
    changed = [row for row in modules if row["diff_norm"] > 0.0]
    return {
        "changed": bool(changed),
        "skipped": None,
        "modules": modules if include_all else changed,
        "layers": layers if include_all else [row for row in layers if row["diff_norm"] > 0.0],
        "total": total,
        "n_changed": len(changed),
    }


# --- config and base --------------------------------------------------------------------------

def _config_value(config: dict | None, field: str) -> Any:
    if config is None:
        return None
    value = config.get(field)
    if field in ("use_rslora", "use_dora"):
        return bool(value)  # PEFT's default is False, so absent and False are the same adapter
    if isinstance(value, (list, tuple, set)):
        return sorted(map(str, value)) or None
    if isinstance(value, dict):
        return value or None
    return value


def _adapter_config(manifest: dict | None) -> dict | None:
    adapter = (manifest or {}).get("adapter")
    return None if not adapter else (adapter.get("config") or {})


def _config_section(m_old: dict | None, m_new: dict, include_all: bool) -> list[dict]:
    c_old, c_new = _adapter_config(m_old), _adapter_config(m_new)
    rows = []
    for field in CONFIG_FIELDS:
        old, new = _config_value(c_old, field), _config_value(c_new, field)
        row = {"field": field, "old": old, "new": new, "changed": old != new}
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


def _base_section(conn: Conn, m_old: dict | None, m_new: dict) -> dict:
    return {
        "old": _base_of(conn, m_old["base"]) if m_old else None,
        "new": _base_of(conn, m_new["base"]),
        "changed": m_old is not None and m_old["base"] != m_new["base"],
    }


# --- scores and gates -------------------------------------------------------------------------

def _score_key(s: dict) -> tuple:
    against = s.get("against")
    return (s.get("suite"), s.get("metric"), against if against is None or isinstance(against, str) else str(against))


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(row: dict | None) -> float | None:
    return None if row is None else _float(row.get("value"))


def _scores_section(m_old: dict | None, m_new: dict, include_all: bool) -> list[dict]:
    s_old = {_score_key(s): s for s in (m_old or {}).get("scores") or []}
    s_new = {_score_key(s): s for s in m_new.get("scores") or []}
    rows = []
    for key in sorted(set(s_old) | set(s_new), key=lambda k: tuple("" if x is None else str(x) for x in k)):
        old, new = s_old.get(key), s_new.get(key)
        v_old, v_new = _number(old), _number(new)
        row = {
            "suite": key[0], "metric": key[1], "against": key[2], "old": v_old, "new": v_new,
            "delta": None if v_old is None or v_new is None else v_new - v_old,
            "n_old": None if old is None else _count(old.get("n")),
            "n_new": None if new is None else _count(new.get("n")),
        }
        row["changed"] = v_old != v_new or row["n_old"] != row["n_new"]
        if include_all or row["changed"]:
            rows.append(row)
    return rows


def _gate(row: dict | None) -> dict | None:
    """A gate row in the schema's shapes: numbers as numbers, ``n`` an integer, ``rule`` and ``detail`` text."""
    if row is None:
        return None
    out: dict[str, Any] = {"passed": bool(row.get("passed"))}
    for k in GATE_FIELDS:
        if k not in row:
            continue
        if k == "n":
            out[k] = _count(row[k])
        elif k in ("rule", "detail"):
            out[k] = row[k] if isinstance(row[k], str) else None
        else:
            out[k] = _float(row[k])
    return out


def _gates_section(m_old: dict | None, m_new: dict, include_all: bool) -> list[dict]:
    g_old = {a["check"]: a for a in (m_old or {}).get("audit") or []}
    g_new = {a["check"]: a for a in m_new.get("audit") or []}
    rows = []
    for check in sorted(set(g_old) | set(g_new)):
        old, new = _gate(g_old.get(check)), _gate(g_new.get(check))
        changed = (old is None) != (new is None) or (old is not None and old["passed"] != new["passed"])
        if include_all or changed:
            rows.append({"check": check, "old": old, "new": new, "changed": changed})
    return rows


# --- data -------------------------------------------------------------------------------------

def blob_preview(reg, digest: str, *, lines: int = PREVIEW_LINES) -> dict:
    """A blob's digest and its first ``lines`` non-blank lines, printable, each cut to ``PREVIEW_CHARS``."""
    text = head_text(reg, digest)
    if text is None:
        return {"digest": digest, "lines": [], "missing": True}
    return {"digest": digest, "lines": first_lines(text, lines, PREVIEW_CHARS), "missing": False}


def _data_section(reg, conn: Conn, old_id: str | None, new_id: str, include_all: bool) -> dict:
    """The versions reachable from one side but not the other (git's ``OLD...NEW``), newest first."""
    ahead = _single_parent_line(conn, new_id, old_id) if old_id is not None else None
    behind = _single_parent_line(conn, old_id, new_id) if old_id is not None and ahead is None else None
    if ahead is not None or behind is not None:
        # One side is a few single-parent steps behind the other (a version against its parent,
        # `HEAD~3 HEAD`): those steps are all that differs, with no walk of the whole history.
        only_new, only_old = ahead or set(), behind or set()
    else:
        anc_new = ancestors(conn, new_id)
        anc_old = ancestors(conn, old_id) if old_id else set()
        only_new, only_old = anc_new - anc_old, anc_old - anc_new
    versions = []
    for side, ids in (("new", only_new), ("old", only_old)):
        for vid, m in _newest(conn, ids, DATA_LIMIT):
            trigger = blob_preview(reg, m["trigger"]) if m.get("trigger") else None
            self_edit = blob_preview(reg, m["self_edit"]) if m.get("self_edit") else None
            has_data = trigger is not None or self_edit is not None
            if include_all or has_data:
                versions.append({
                    "side": side, "id": vid, "kind": m["kind"], "status": m["status"],
                    "created_at": m["created_at"], "message": m.get("message", ""),
                    "trigger": trigger, "self_edit": self_edit, "has_data": has_data,
                })
    return {"only_in_new": len(only_new), "only_in_old": len(only_old), "limit": DATA_LIMIT, "versions": versions}


def _single_parent_line(conn: Conn, new_id: str, old_id: str, steps: int = 1000) -> set[str] | None:
    """The versions from NEW back to OLD (OLD excluded) when each has exactly one parent and OLD is
    at most ``steps`` back; None otherwise. Then ancestors(NEW) - ancestors(OLD) is exactly that set."""
    line, vid = set(), new_id
    for _ in range(steps):
        if vid == old_id:
            return line
        ps = parents_of(conn, vid)
        if len(ps) != 1:
            return None
        line.add(vid)
        vid = ps[0]
    return None


def _newest(conn: Conn, ids: set[str], limit: int) -> list[tuple[str, dict]]:
    """The ``limit`` newest of ``ids`` with their manifests, newest first."""
    stamps = conn.all_in("SELECT created_at, id FROM versions WHERE id IN ({marks})", sorted(ids))
    chosen = [vid for _, vid in sorted(stamps, key=lambda t: (str(t[0]), t[1]), reverse=True)[:limit]]
    return [(vid, stored_manifest(conn.scalar("SELECT manifest FROM versions WHERE id = ?", (vid,)), vid))
            for vid in chosen]
