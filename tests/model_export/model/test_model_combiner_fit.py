"""Fitting the disc finding combiners on validation rows."""

from __future__ import annotations

import numpy as np

from model_export.evaluation.combiner_fit import LevelRow, fit_combiner, score_pairs, select_combiner


def _rows(n: int, seed: int = 0, informative: bool = True) -> list[LevelRow]:
    """Protrusions reach 3-7 mm behind the bodies, other discs up to 1.5 mm (or, not informative, every
    disc -2 to 7 mm); the model's score is noise. Eight discs per study."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        actual = i % 4 == 0
        extent = (rng.uniform(3, 7) if actual else rng.uniform(-2, 1.5)) if informative else rng.uniform(-2, 7)
        rows.append(LevelRow("disc_protrusion", float(rng.uniform(0.05, 0.95)),
                             {"posterior_extent_mm": extent, "migration_mm": float(rng.uniform(0, 3)),
                              "endplate_intrusion_mm": float(rng.uniform(0, 2))}, actual, f"study{i // 8}"))
    return rows


def test_combiner_learns_the_measurement_that_separates_the_classes():
    rows = _rows(80)
    combiner, report = select_combiner("disc_protrusion", rows)
    assert report["kept"] and report["auc_combined_cross_validated"] > 0.95 > report["auc_model"]
    weights = dict(zip(combiner.features, combiner.weights, strict=True))
    assert weights["posterior_extent_mm"] > abs(weights["learned_logit"])
    held_out = _rows(80, seed=1)
    decided = [(combiner.probability(r.learned, r.measurements) >= combiner.threshold) == r.actual for r in held_out]
    assert np.mean(decided) > 0.9


def test_no_combiner_with_too_few_positive_discs_or_unmeasured_rows_only():
    rows = [r for r in _rows(80) if not r.actual][:40] + [r for r in _rows(80) if r.actual][:2]
    assert fit_combiner("disc_protrusion", rows) is None
    unmeasured = [LevelRow(r.finding, r.learned, None, r.actual) for r in _rows(80)]
    assert fit_combiner("disc_protrusion", unmeasured) is None


def test_score_pairs_keep_the_models_own_scores_per_finding():
    rows = _rows(8) + [LevelRow("vertebral_degeneration", 0.7, None, True)]
    pairs = score_pairs(rows)
    assert pairs["vertebral_degeneration"] == [(0.7, True)]
    assert [p for p, _ in pairs["disc_protrusion"]] == [r.learned for r in rows[:8]]


def test_a_combiner_whose_measurements_carry_no_signal_is_not_kept():
    combiner, report = select_combiner("disc_protrusion", _rows(120, informative=False))
    assert combiner is None
    assert report["kept"] is False and report["auc_combined_cross_validated"] < report["auc_model"] + 0.01
