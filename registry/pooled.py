"""Pooled evidence over a branch: did this stream of edits teach the model, and what did it cost?

One edit's 4-5 questions cannot show a gain in generated answers; a branch's accepted edits
together can. Each accepted edit is one cluster (its passage's questions share the passage, so
they are not independent): the pooled gain is the question-weighted mean of the per-edit gains,
``sum(n_i * gain_i) / sum(n_i)``, and its 95% interval a percentile bootstrap that resamples
whole edits (a passage-clustered bootstrap), seeded so a report is a pure function of the rows.

    >>> rows = [{"gain": 0.2, "n": 5}, {"gain": 0.0, "n": 4}, {"gain": 0.4, "n": 5}, {"gain": 0.2, "n": 4}]
    >>> p = clustered_gain(rows)
    >>> round(p["estimate"], 3), p["edits"], p["n"], p["ci_low"] <= p["estimate"] <= p["ci_high"]
    (0.211, 4, 18, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from . import vocabulary as V

RESAMPLES = 4000
SEED = 20261207


def clustered_gain(rows: Sequence[dict[str, Any]], *, alpha: float = 0.05, resamples: int = RESAMPLES,
                   seed: int = SEED) -> dict[str, Any]:
    """The question-weighted mean gain of ``rows`` (``gain``, ``n`` per edit) and its clustered CI."""
    import numpy as np

    rows = [r for r in rows if r.get("gain") is not None and r.get("n")]
    if not rows:
        return {"estimate": None, "ci_low": None, "ci_high": None, "edits": 0, "n": 0}
    gains = np.array([float(r["gain"]) for r in rows])
    ns = np.array([int(r["n"]) for r in rows], dtype=float)
    estimate = float((gains * ns).sum() / ns.sum())
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(rows), size=(resamples, len(rows)))
    boot = (gains[picks] * ns[picks]).sum(axis=1) / ns[picks].sum(axis=1)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {"estimate": estimate, "ci_low": float(low), "ci_high": float(high), "edits": len(rows),
            "n": int(ns.sum())}


def _per_edit(manifest: dict) -> dict[str, dict[str, Any]]:
    out = {}
    for name, score in (("containment", V.EFFICACY_CONTAINMENT), ("f1", V.EFFICACY_F1)):
        value, parent = score.of(manifest), score.vs("parent").of(manifest)
        n = next((s.get("n") for s in manifest.get("scores") or []
                  if (s.get("suite"), s.get("metric"), s.get("against")) == score.key), None)
        if value is not None and parent is not None:
            out[name] = {"gain": value - parent, "n": n}
    margin = V.EFFICACY_MARGIN_GAIN.of(manifest)
    n_margin = next((s.get("n") for s in manifest.get("scores") or []
                     if (s.get("suite"), s.get("metric"), s.get("against")) == V.EFFICACY_MARGIN_GAIN.key), None)
    if margin is not None:
        out["margin_gain"] = {"gain": margin, "n": n_margin}
    return out


def pooled_efficacy(manifests: Iterable[dict]) -> dict[str, Any]:
    """Pooled gains of the accepted edits among ``manifests``: containment and token F1 (each
    against the parent, per question) and the placebo-corrected answer-margin gain (nats).

        >>> m = {"kind": "edit", "status": "accepted", "scores": [
        ...     {"suite": "efficacy", "metric": "containment", "against": None, "value": 0.4, "n": 5},
        ...     {"suite": "efficacy", "metric": "containment", "against": "parent", "value": 0.2, "n": 5}]}
        >>> pooled_efficacy([m, m])["containment"]["estimate"]
        0.2
    """
    per = [_per_edit(m) for m in manifests if m.get("kind") == "edit" and m.get("status") == "accepted"]
    out: dict[str, Any] = {"accepted_edits": len(per)}
    for key in ("containment", "f1", "margin_gain"):
        out[key] = clustered_gain([p[key] for p in per if key in p])
    out["method"] = ("question-weighted mean gain of the accepted edits (each against its parent; margin_gain "
                     "against its placebo), 95% percentile bootstrap over edits (passage-clustered), "
                     f"{RESAMPLES} resamples, seed {SEED}")
    return out


__all__ = ["clustered_gain", "pooled_efficacy"]
