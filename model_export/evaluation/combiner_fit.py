"""Fit the disc finding combiners (service/infer/level_findings.py) on validation studies.

Each level the truth states gives one row per finding: the model's delivered probability, the truth and,
for a disc, the delivered disc's measurements (service/infer/disc_morphometry.py). Per disc finding, a
logistic regression with an L2 penalty (a few dozen positive discs at most, so the penalty keeps the weights modest) maps the
standardised inputs to a probability, and its threshold is the best-F1 one on the same rows, as for the
model's own scores. Discs the prediction lacks or could not measure keep the model's score; they are left
out of the fit.

A combiner is kept only where it beats the model's score on discs it was not fitted on: fitted on all
validation studies but one fold and scored on that fold, over CV_FOLDS folds of whole studies, its AUC
must exceed the model score's by KEEP_MARGIN. A measurement that carries no signal (the delivered outline
does not follow the disc's back) then leaves the model's score in charge instead of adding noise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_export.evaluation.finding_pooling import auc
from service.infer.disc_morphometry import FEATURES
from service.infer.level_findings import LEARNED, FindingCombiner, logit

L2_PENALTY = 1.0
"""On the standardised weights; the bias is not penalised."""
NEWTON_STEPS = 50
MIN_POSITIVES = 3
"""With fewer positive discs a finding gets no combiner: its model score alone decides."""
CV_FOLDS = 5
KEEP_MARGIN = 0.01
"""Cross-validated AUC gain over the model's score that a combiner must show to be kept."""


@dataclass
class LevelRow:
    finding: str
    learned: float
    measurements: dict[str, float] | None
    actual: bool
    case: str = ""
    label: int = 0
    """The structure's label; with ``case`` it names the level the row belongs to."""


def level_rows(predictor: Any, cases: list) -> list[LevelRow]:
    """One row per (level the truth states and contains, finding), from the delivered output: the
    model's score (0 where the prediction lacks the level) and, for a measured disc, its measurements."""
    from model_export.evaluation.evaluate import delivered_levels

    ontology = predictor.ontology
    rows = []
    for case in cases:
        labels, probs, maps = predictor.run(case)
        refiner = predictor.outline_refiner(case) if predictor.outline_refiner is not None else None
        spine = delivered_levels(labels, probs, maps, case, {}, ontology, outline_refiner=refiner)
        delivered = {lv.label: lv for lv in spine.levels}
        present = set(np.unique(case.labels).tolist())
        for label, values in case.findings.items():
            if label not in present:
                continue
            level = delivered.get(label)
            learned = {f.key: f.probability for f in level.findings} if level is not None else {}
            measured = None
            if level is not None and level.posterior_extent_mm is not None:
                measured = {f: getattr(level, f) for f in FEATURES}
            rows += [LevelRow(key, float(learned.get(key, 0.0)), measured, bool(actual), case.name, label)
                     for key, actual in values.items()]
    return rows


def score_pairs(rows: list[LevelRow]) -> dict[str, list[tuple[float, bool]]]:
    """Finding key -> (model score, truth) per level, for tuning the model's own thresholds."""
    pairs: dict[str, list[tuple[float, bool]]] = {}
    for r in rows:
        pairs.setdefault(r.finding, []).append((r.learned, r.actual))
    return pairs


def fit_combiner(finding: str, rows: list[LevelRow]) -> FindingCombiner | None:
    """The finding's combiner, or None with fewer than MIN_POSITIVES measured positive discs."""
    from model_export.evaluation.metrics import best_f1_threshold

    used = _measured(finding, rows)
    actual = np.array([r.actual for r in used], dtype=bool)
    if actual.sum() < MIN_POSITIVES or (~actual).sum() < MIN_POSITIVES:
        return None
    names = (LEARNED, *FEATURES)
    x = np.array([[logit(r.learned), *(r.measurements[f] for f in FEATURES)] for r in used], dtype=float)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    weights, bias = _logistic_regression((x - mean) / scale, actual.astype(float), L2_PENALTY)
    combiner = FindingCombiner(finding, names, tuple(mean.tolist()), tuple(scale.tolist()),
                               tuple(weights.tolist()), float(bias), 0.5)
    combined = np.array([combiner.probability(r.learned, r.measurements) for r in used])
    return dataclasses.replace(combiner, threshold=float(best_f1_threshold(combined, actual)))


def cross_validated_auc(finding: str, rows: list[LevelRow], folds: int = CV_FOLDS) -> float | None:
    """AUC of out-of-fold combined probabilities, folds made of whole studies; None when a fold's
    training part cannot be fitted."""
    used = _measured(finding, rows)
    cases = sorted({r.case for r in used})
    if len(cases) < folds:
        return None
    fold_of = {case: i % folds for i, case in enumerate(cases)}
    scored = []
    for k in range(folds):
        combiner = fit_combiner(finding, [r for r in used if fold_of[r.case] != k])
        if combiner is None:
            return None
        scored += [(combiner.probability(r.learned, r.measurements), r.actual) for r in used if fold_of[r.case] == k]
    return auc(scored)


def select_combiner(finding: str, rows: list[LevelRow]) -> tuple[FindingCombiner | None, dict[str, Any]]:
    """The combiner fitted on all rows if its cross-validated AUC beats the model's score, and the
    figures that decided it."""
    combiner = fit_combiner(finding, rows)
    used = _measured(finding, rows)
    report: dict[str, Any] = {"discs": len(used), "positive": sum(r.actual for r in used),
                              "auc_model": auc([(r.learned, r.actual) for r in used])}
    if combiner is None:
        return None, {**report, "kept": False, "why": f"fewer than {MIN_POSITIVES} measured positive discs"}
    report["auc_combined_cross_validated"] = cv = cross_validated_auc(finding, rows)
    report["weights"] = dict(zip(combiner.features, (round(w, 3) for w in combiner.weights), strict=True))
    report["threshold"] = round(combiner.threshold, 4)
    kept = cv is not None and report["auc_model"] is not None and cv > report["auc_model"] + KEEP_MARGIN
    return (combiner if kept else None), {**report, "kept": kept}


def _measured(finding: str, rows: list[LevelRow]) -> list[LevelRow]:
    """The finding's rows of discs the delivered output measured: the ones a combiner fits and scores."""
    return [r for r in rows if r.finding == finding and r.measurements is not None]


def _logistic_regression(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, float]:
    """Penalised maximum likelihood by Newton's method (a handful of inputs, so exact steps are cheap)."""
    design = np.hstack([np.ones((len(x), 1)), x])
    theta = np.zeros(design.shape[1])
    ridge = np.diag([0.0] + [penalty] * x.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ theta, -50, 50)))
        gradient = design.T @ (p - y) + ridge @ theta
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + ridge + 1e-9 * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[1:], float(theta[0])
