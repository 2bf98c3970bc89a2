"""Metrics on hand-made masks and counts with known answers; the paired test and the Markdown table."""

from __future__ import annotations

import numpy as np
import pytest

from model_export.data import Case
from model_export.evaluation.evaluate import CaseView, ModelResult, summarise
from model_export.evaluation.metrics import (
    Counts,
    best_f1_threshold,
    kind_map,
    kind_of_label,
    miou_loss_by_cause,
    overlap_per_structure,
)
from model_export.evaluation.report import markdown
from model_export.evaluation.stats import paired_comparison
from service.ontology import DEFAULT_ONTOLOGY


def test_dice_and_iou_of_overlapping_squares_match_the_hand_count():
    truth = np.zeros((1, 10, 10), dtype=np.uint8)
    pred = np.zeros_like(truth)
    truth[0, 0:4, 0:4] = 1  # 16 voxels
    pred[0, 2:6, 0:4] = 1  # 16 voxels, 8 shared
    truth[0, 8:10, 8:10] = 2  # 4 voxels, not predicted
    pred[0, 6, 6] = 3  # 1 voxel, not in truth
    scores = overlap_per_structure(pred, truth, [1, 2, 3, 4])
    assert scores[1] == pytest.approx((2 * 8 / 32, 8 / 24))
    assert scores[2] == (0.0, 0.0)
    assert scores[3] == (0.0, 0.0)
    assert 4 not in scores  # absent from both: undefined, skipped


def test_counts_give_recall_precision_and_fpr_per_level():
    c = Counts()
    for predicted, actual in [(True, True)] * 3 + [(False, True)] + [(True, False)] + [(False, False)] * 5:
        c.add(predicted, actual)
    r = c.rates()
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (3, 1, 1, 5)
    assert r["recall"] == 0.75 and r["precision"] == 0.75 and r["fpr"] == pytest.approx(1 / 6)
    assert Counts().rates()["recall"] is None


def test_paired_comparison_detects_a_consistent_improvement_with_its_effect_size():
    rng = np.random.default_rng(0)
    theirs = rng.uniform(0.5, 0.7, 20)
    ours = theirs + 0.05 + rng.normal(0, 0.01, 20)
    result = paired_comparison(list(ours), list(theirs))
    assert result["p_value"] < 1e-4
    diff = ours - theirs
    assert result["cohens_d"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert paired_comparison([0.5, 0.6], [0.5, 0.6])["p_value"] is None


def test_best_threshold_separates_cleanly_separable_scores():
    probs = np.array([0.1, 0.2, 0.3, 0.72, 0.8, 0.9])
    actual = np.array([False, False, False, True, True, True])
    t = best_f1_threshold(probs, actual)
    assert 0.3 < t <= 0.72
    assert best_f1_threshold(probs, np.zeros(6, dtype=bool)) == 0.5


def test_miou_loss_splits_into_outline_misnamed_missed_and_extra_and_sums_to_one_minus_miou():
    truth = np.zeros((1, 10, 10), dtype=np.uint8)
    pred = np.zeros_like(truth)
    truth[0, 0:4, 0:4] = 1
    pred[0, 0:4, 0:3] = 1  # three quarters of structure 1 under its own label: outline, IoU 0.75
    truth[0, 5:7, 0:4] = 2
    pred[0, 5:7, 0:4] = 3  # structure 2 called 3: misnamed; 3 is absent from the truth: extra
    truth[0, 8:10, 8:10] = 4  # never predicted: missed
    stated = [1, 2, 3, 4]
    loss = miou_loss_by_cause(pred, truth, stated)
    assert loss == pytest.approx({"outline": 0.25 / 4, "misnamed": 1 / 4, "missed": 1 / 4, "extra": 1 / 4})
    case_miou = np.mean([iou for _, iou in overlap_per_structure(pred, truth, stated).values()])
    assert sum(loss.values()) == pytest.approx(1 - case_miou)


def test_summary_has_mean_and_sd_over_cases_and_a_table_per_structure():
    a = ModelResult("ours", "text_guided", ["c1", "c2"], [0.8, 0.6], [0.9, 0.7], {1: [(0.9, 0.8), (0.7, 0.6)]})
    b = ModelResult("base", "unet", ["c1", "c2"], [0.7, 0.5], [0.8, 0.6], {1: [(0.8, 0.7), (0.6, 0.5)]})
    summary = summarise([a, b], DEFAULT_ONTOLOGY)
    ours = summary["models"][0]
    assert ours["miou"] == pytest.approx(0.7) and ours["miou_sd"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert ours["per_structure"]["Sacrum"]["dice"] == pytest.approx(0.8)
    assert summary["comparisons"][0]["miou"]["mean_difference"] == pytest.approx(0.1)
    text = markdown(summary)
    assert "| Sacrum |" in text and "Wilcoxon" in text and "per case" in text
    assert "Where the mIoU is lost" in text and ours["miou_loss"] is None  # no per-case split recorded


def test_kind_map_ignores_the_level_so_a_vertebra_named_one_level_off_still_counts_as_vertebra():
    ontology = DEFAULT_ONTOLOGY
    kinds = kind_of_label(ontology)
    l4, l3 = ontology.by_level("L4", "vertebra").label, ontology.by_level("L3", "vertebra").label
    truth = np.zeros((1, 4, 4), np.uint8)
    truth[0, :2] = l4
    pred = np.zeros_like(truth)
    pred[0, :2] = l3
    assert overlap_per_structure(pred, truth, [l3, l4]) == {l3: (0.0, 0.0), l4: (0.0, 0.0)}
    vertebra = kinds[l4]
    kind_scores = overlap_per_structure(kind_map(pred, kinds), kind_map(truth, kinds), [vertebra])
    assert kind_scores == {vertebra: (1.0, 1.0)}


def test_resolution_ceiling_loses_a_one_pixel_disc_on_a_stride_two_grid_and_keeps_it_at_full_size():
    from model_export.evaluation.resolution_ceiling import ceiling_miou, round_trip

    labels = np.zeros((1, 40, 40), dtype=np.uint8)
    labels[0, 10:20, 10:30] = 1  # a vertebral body
    labels[0, 21, 10:30] = 2  # a disc one pixel tall
    labels[0, 23:33, 10:30] = 3
    assert ceiling_miou(labels, 40, [1, 2, 3]) == 1.0
    assert (round_trip(labels, 20, 4) == 2).sum() < 20  # half a pixel's share per cell: the disc mostly goes
    assert ceiling_miou(labels, 20, [1, 2, 3]) < 0.8


def test_delivered_findings_are_scored_with_the_disc_combiners_and_raw_ones_with_the_cards_thresholds(
        tiny_generated_study):
    from model_export.data import read_generated_study
    from model_export.evaluation.evaluate import Predictor, evaluate_predictor
    from service.infer.level_findings import LEARNED, combiners_from_card
    from service.ontology import DEFAULT_ONTOLOGY as O

    case = read_generated_study(tiny_generated_study)
    never = {"features": [LEARNED, "posterior_extent_mm", "migration_mm"], "mean": [0.0] * 3, "scale": [1.0] * 3,
             "weights": [0.0] * 3, "bias": -20.0, "threshold": 0.5}
    discs = [s.label for s in O.of_kind("disc")]

    def run(_):
        return case.labels, {d: {f.key: 0.3 for f in O.findings_at("disc")} for d in discs}, None

    predictor = Predictor("truth", "test", {"disc_protrusion": 0.25}, run, O,
                          combiners_from_card({"finding_combiners": {"disc_protrusion": never}}))
    raw, post = evaluate_predictor(predictor, [case], O, postprocessed=True)
    stated = sum(1 for label in case.findings if label in discs and (case.labels == label).any())
    assert stated > 0
    assert raw.findings["disc_protrusion"].tp + raw.findings["disc_protrusion"].fp == stated
    assert post.findings["disc_protrusion"].tp + post.findings["disc_protrusion"].fp == 0


def test_the_worst_cases_kept_are_the_lowest_miou_ones_shown_on_their_most_wrong_slice():
    truth = np.zeros((3, 8, 8), dtype=np.uint8)
    truth[:, 2:6, 2:6] = 1
    prediction = truth.copy()
    prediction[2, 2:6, 2:4] = 0  # slice 2 is the one with the most wrong voxels
    case = Case("c", truth.astype(np.float32), None, truth, frozenset({1}))
    view = CaseView.of(case, prediction, 0.8)
    assert view.slice_index == 2 and (view.prediction == prediction[2]).all()
    result = ModelResult("ours", "text_guided")
    for name, miou in [("a", 0.9), ("b", 0.3), ("c", 0.7), ("d", 0.5), ("e", 0.95)]:
        result.remember_if_worst(CaseView(name, miou, 0, truth[0], truth[0], truth[0]))
    assert [v.name for v in result.worst_cases] == ["b", "d", "c"]
