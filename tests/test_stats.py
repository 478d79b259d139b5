"""Gates as statistical decisions: the paired tests, the power calculation, the stored record.

Everything here is synthetic paired outcomes with a known truth, so each test can fail: a clear
drop must fail its gate, noise of the size null edits make must pass, the power formula must
agree with a simulation of the real rule, and the verdict must fit the audits table.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from seal.editor import stats
from seal.editor.stats import (
    GateDecision,
    bootstrap_bound,
    bootstrap_gate,
    mcnemar_exact_p,
    paired_binary_gate,
    paired_binary_mde,
    paired_binary_n,
    paired_binary_reject_probability,
    paired_counts,
    tango_bound,
)


def _paired(rng: np.random.Generator, n: int, base_rate: float, p_lost: float, p_gained: float):
    """Reference outcomes and a candidate that loses/gains items at the given per-item rates."""
    ref = rng.random(n) < base_rate
    u = rng.random(n)
    cand = ref.copy()
    cand[ref & (u < p_lost / base_rate)] = False
    cand[~ref & (u < p_gained / (1 - base_rate))] = True
    return ref, cand


# ------------------------------------------------------------------------ binary rule


def test_clear_drop_fails_and_noise_passes():
    rng = np.random.default_rng(0)
    noisy_passes, drops_fail = 0, 0
    for _ in range(50):
        # Null edit: 3% of items flip each way (discordance 0.06), no real change.
        ref, cand = _paired(rng, 400, 0.6, 0.03, 0.03)
        noisy_passes += paired_binary_gate("retention_vs_parent", ref, cand, threshold=0.05).passed
        # Destructive edit: 15% of items lost, 2% gained.
        ref, cand = _paired(rng, 400, 0.6, 0.15, 0.02)
        drops_fail += not paired_binary_gate("retention_vs_parent", ref, cand, threshold=0.05).passed
    assert noisy_passes >= 47  # design: a null edit passes ≥ 95% of the time at n=400, ψ=0.06
    assert drops_fail == 50


def test_rise_direction_for_over_refusal():
    safe_base = np.zeros(250, dtype=bool)
    cand = safe_base.copy()
    cand[:40] = True  # the candidate refuses 40 harmless prompts it used to answer
    d = paired_binary_gate("over_refusal", safe_base, cand, threshold=0.05, harm="rise", what="over-refusal")
    assert not d.passed and d.estimate == pytest.approx(0.16)
    # The same change read as a drop would be an improvement: it passes.
    assert paired_binary_gate("x", safe_base, cand, threshold=0.05, harm="drop").passed


def test_tango_bound_edge_cases_and_symmetry():
    assert tango_bound(0, 0, 300) == pytest.approx(1.645 ** 2 / (300 + 1.645 ** 2), abs=2e-4)
    assert tango_bound(0, 0, 300, upper=False) == pytest.approx(-tango_bound(0, 0, 300), abs=1e-9)
    assert tango_bound(5, 9, 200) == pytest.approx(-tango_bound(9, 5, 200, upper=False), abs=1e-9)
    assert -1.0 <= tango_bound(200, 0, 200, upper=False) <= tango_bound(200, 0, 200) <= 1.0
    with pytest.raises(ValueError):
        tango_bound(3, 3, 5)


def test_tango_upper_bound_covers_the_true_drop():
    """One-sided coverage of the 95% upper bound is near nominal at gate-sized samples."""
    rng = np.random.default_rng(1)
    n, trials = 200, 600
    p_lost, p_gained = 0.05, 0.02
    truth = p_lost - p_gained
    draws = rng.multinomial(n, [p_lost, p_gained, 1 - p_lost - p_gained], size=trials)
    bounds: dict[tuple[int, int], float] = {}
    covered = 0
    for lost, gained, _ in draws:
        key = (int(lost), int(gained))
        if key not in bounds:
            bounds[key] = tango_bound(*key, n)
        covered += bounds[key] >= truth
    assert 0.92 <= covered / trials <= 0.985


def test_mcnemar_exact_matches_binomial_tail():
    assert mcnemar_exact_p(9, 1) == pytest.approx(11 / 1024)
    assert mcnemar_exact_p(0, 5) == pytest.approx(1.0)
    assert mcnemar_exact_p(5, 0) == pytest.approx(1 / 32)


def test_paired_counts_rejects_unpaired_or_non_binary_input():
    with pytest.raises(ValueError, match="same items"):
        paired_counts([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="0/1"):
        paired_counts([1, 2], [1, 0])


# ------------------------------------------------------------------------ power


def test_power_formula_matches_simulation_of_the_rule():
    """paired_binary_reject_probability predicts how often the real (Tango) rule rejects."""
    rng = np.random.default_rng(2)
    n, psi, threshold, trials = 400, 0.08, 0.05, 400
    cache: dict[tuple[int, int], float] = {}
    for true_drop in (0.0, 0.03, 0.05, 0.08):
        p_lost, p_gained = (psi + true_drop) / 2, (psi - true_drop) / 2
        draws = rng.multinomial(n, [p_lost, p_gained, 1 - psi], size=trials)
        rejected = 0
        for lost, gained, _ in draws:
            key = (int(lost), int(gained))
            if key not in cache:
                cache[key] = tango_bound(*key, n)
            rejected += cache[key] > threshold
        predicted = paired_binary_reject_probability(n, psi, true_drop, threshold)
        assert abs(rejected / trials - predicted) < 0.06, (true_drop, rejected / trials, predicted)


def test_sample_size_and_mde_are_inverse():
    n = paired_binary_n(0.05, 0.06, power=0.8)
    assert paired_binary_mde(n, 0.06, power=0.8) <= 0.05 < paired_binary_mde(n - 1, 0.06, power=0.8)
    # A null edit at the chosen n passes with the asked-for probability.
    assert 1 - paired_binary_reject_probability(n, 0.06, 0.0, 0.05) == pytest.approx(0.8, abs=0.01)
    assert paired_binary_mde(0, 0.1) == math.inf


# ------------------------------------------------------------------------ continuous


def test_bootstrap_is_seeded_and_detects_a_shift():
    rng = np.random.default_rng(3)
    noise = rng.normal(0.0, 0.1, size=32)
    assert bootstrap_bound(noise) == bootstrap_bound(noise)
    assert bootstrap_gate("drift", np.abs(noise) * 0.1, threshold=0.05, what="JS").passed
    shifted = np.abs(noise) * 0.1 + 0.2
    d = bootstrap_gate("drift", shifted, threshold=0.05, what="JS")
    assert not d.passed and d.ci_low > 0.05 and d.n == 32


def test_bootstrap_refuses_non_finite_values():
    with pytest.raises(ValueError, match="finite"):
        bootstrap_bound([0.1, float("nan")])


# ------------------------------------------------------------------------ the record


def test_decision_fits_the_audits_table_and_the_manifest():
    from seal.registry.store.objects import build_manifest, check_manifest
    from seal.registry.store.schema import AUDITS_VIEW

    ref = np.array([1] * 60 + [0] * 40)
    d = paired_binary_gate("retention_vs_parent", ref, ref, threshold=0.05)
    entry = d.audit_entry()
    columns = set(AUDITS_VIEW) - {"position", "version_id", "check_name"}
    assert set(entry) - {"check", "mde"} == columns
    assert entry["value"] == 0.0 and entry["n"] == 100 and entry["rule"].startswith("reject if")
    assert entry["ci_low"] < 0 < entry["ci_high"] <= 0.05 and entry["passed"] is True

    nan = GateDecision("kl_vs_base", float("nan"), None, float("inf"), 3, "rule", 2.0, False, "x")
    assert nan.audit_entry()["value"] is None and nan.audit_entry()["ci_high"] is None

    manifest = build_manifest(base="0" * 64, parents=[], kind="root", status="accepted",
                              audit=[entry, nan.audit_entry()])
    check_manifest(manifest)  # the audits view reads these fields back (tests/test_schema.py)


def test_missing_outcomes_fail_the_gate():
    d = paired_binary_gate("refusal", None, [1, 0], threshold=0.05)
    assert not d.passed and d.detail.startswith("missing")
    assert not bootstrap_gate("js", [], threshold=0.1, what="JS").passed


def test_stats_imports_no_model_library():
    import subprocess
    import sys

    code = ("import sys, seal.editor.stats; "
            "bad = [m for m in ('torch', 'transformers', 'scipy', 'peft') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert stats.BOOTSTRAP_RESAMPLES == 2000


def test_gain_gate_needs_a_real_gain():
    from seal.editor.stats import bootstrap_gain_gate

    rng = np.random.default_rng(4)
    real = rng.normal(0.15, 0.1, size=40)
    noise = rng.normal(0.0, 0.1, size=40)
    assert bootstrap_gain_gate("efficacy_gain", real, threshold=0.0, what="F1 gain").passed
    d = bootstrap_gain_gate("efficacy_gain", noise, threshold=0.0, what="F1 gain")
    assert not d.passed and d.rule.startswith("accept if")
