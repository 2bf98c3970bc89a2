"""Real-scan scores on hand-made masks whose answers are known."""

from __future__ import annotations

import numpy as np

from model_export.data import Case
from model_export.evaluation.real_metrics import score_real_case, summarise_real
from model_export.real_cases import RANK_BASE
from service.ontology import DEFAULT_ONTOLOGY

CHAIN = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)


def _case(labels: np.ndarray, level_known: bool = True) -> Case:
    values = frozenset(int(v) for v in np.unique(labels) if v)
    return Case("c", labels.astype(np.float32), None, labels, values, partial=True, level_known=level_known)


def _blocks(values: list[int]) -> np.ndarray:
    labels = np.zeros((1, 40, 60), dtype=np.uint8)
    for i, v in enumerate(values):
        labels[0, 36 - 8 * i - 4: 36 - 8 * i, 30:40] = v
    return labels


def test_disc_dice_by_name_and_level_free():
    truth = _blocks([11, 12])
    pred = truth.copy()
    pred[truth == 12] = 13  # right place, wrong name
    score = score_real_case(_case(truth), pred, DEFAULT_ONTOLOGY, CHAIN)
    assert score.kind == "discs"
    assert score.disc_dice == 0.5  # L5/S1 right (1.0), L4/L5 missed (0.0)
    assert score.disc_dice_level_free == 1.0


def test_bodies_named_one_level_off_are_all_wrong_and_recall_nothing():
    truth = _blocks([2, 3, 4])
    pred = truth.copy()
    for v in (2, 3, 4):
        pred[truth == v] = v + 1
    score = score_real_case(_case(truth), pred, DEFAULT_ONTOLOGY, CHAIN)
    assert (score.bodies, score.bodies_named_right, score.body_recall) == (3, 0, 0.0)
    assert score.all_bodies_right is False


def test_body_half_covered_by_its_name_is_right_with_recall_one_half():
    truth = _blocks([2, 3])
    pred = truth.copy()
    pred[0, 32:34, 30:40] = 0  # the bottom body (rows 32-35) loses half its voxels
    score = score_real_case(_case(truth), pred, DEFAULT_ONTOLOGY, CHAIN)
    assert score.bodies_named_right == 2
    assert score.body_recall == 60 / 80


def test_a_body_barely_labelled_is_missed_not_named():
    truth = _blocks([2])
    pred = np.zeros_like(truth)
    pred[0, 32, 30:33] = 2  # 3 of 40 voxels
    assert score_real_case(_case(truth), pred, DEFAULT_ONTOLOGY, CHAIN).bodies_named_right == 0


def test_ranked_bodies_are_scored_under_the_best_consecutive_run():
    truth = _blocks([RANK_BASE + 1, RANK_BASE + 2, RANK_BASE + 3])
    pred = np.zeros_like(truth)
    for r, name in ((1, 2), (2, 3), (3, 4)):  # a run from L5: offset 1
        pred[truth == RANK_BASE + r] = name
    score = score_real_case(_case(truth, level_known=False), pred, DEFAULT_ONTOLOGY, CHAIN)
    assert score.kind == "ranked bodies" and score.bodies_named_right == 3 and score.body_recall == 1.0
    pred[truth == RANK_BASE + 2] = 4  # two bodies called L3: no run names all three
    assert score_real_case(_case(truth, level_known=False), pred, DEFAULT_ONTOLOGY, CHAIN).bodies_named_right == 2


def test_soft_tissue_voxels_are_those_20_mm_in_front_of_the_labels():
    truth = _blocks([2, 3])
    pred = truth.copy()
    pred[0, 30, 5:8] = 1  # 22-25 columns in front of the bodies: soft tissue
    pred[0, 30, 15:20] = 1  # within 20 mm: not counted
    score = score_real_case(_case(truth), pred, DEFAULT_ONTOLOGY, CHAIN)
    assert score.soft_tissue_voxels == 3
    summary = summarise_real([score])
    assert summary["studies_without_soft_tissue_labels"] == 0.0
    assert summary["bodies_named_right"] == 1.0 and summary["studies_all_bodies_right"] == 1.0
