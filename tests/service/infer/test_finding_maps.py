"""Findings pooled inside the delivered structures, on hand-made logits whose pooled value is known."""

from __future__ import annotations

import numpy as np
import pytest

from service.infer.finding_maps import FindingMaps
from service.infer.input_view import SliceBox
from service.infer.postprocess import postprocess
from service.ontology import DEFAULT_ONTOLOGY as ONT
from tests.service.encode.label_factory import CANONICAL
from tests.service.infer.test_postprocess import COLS, ROWS, SLICES, grid, spine

FINDINGS = [f.key for f in ONT.findings]
DEGENERATION = FINDINGS.index("vertebral_degeneration")


def test_pool_is_the_log_mean_exp_of_the_logits_inside_each_label():
    labels = np.zeros((1, 4, 4), np.uint8)
    labels[0, :2, :] = 3
    logits = np.zeros((1, 2, 4, 4), np.float32)
    logits[0, 0, 0, :] = np.log(3.0)  # half of label 3 at exp = 3, the other half at exp = 1
    logits[0, 1] = -2.0
    pooled = FindingMaps(logits, SliceBox.square(4, 4)).pool(labels)
    assert set(pooled) == {3}
    assert pooled[3][0] == pytest.approx(np.log(2.0))
    assert pooled[3][1] == pytest.approx(-2.0)


def test_dilated_pool_reaches_evidence_just_outside_the_delivered_disc():
    # a disc outline that stops one pixel short of the herniated pixels behind it
    labels = np.zeros((2, 6, 6), np.uint8)
    labels[:, 2:4, 1:4] = 7
    logits = np.full((2, 1, 6, 6), -4.0, np.float32)
    logits[0, 0, 2, 5] = 8.0  # two columns behind the disc: outside even a 1-pixel widening
    logits[1, 0, 3, 4] = 6.0  # right behind it
    plain = FindingMaps(logits, SliceBox.square(6, 6)).pool(labels)[7][0]
    widened = FindingMaps(logits, SliceBox.square(6, 6), dilation=1).pool(labels)[7][0]
    assert plain == pytest.approx(-4.0)
    # widened by one pixel in-plane only: 4 x 5 = 20 pixels per slice, and one of the 40 is at 6
    assert widened == pytest.approx(np.log((39 * np.exp(-4.0) + np.exp(6.0)) / 40))


def test_dilation_widens_each_slice_in_plane_not_across_slices():
    labels = np.zeros((3, 5, 5), np.uint8)
    labels[1, 2, 2] = 4
    maps = FindingMaps(np.zeros((3, 1, 5, 5), np.float32), SliceBox.square(5, 5), dilation=1)
    mask = maps.structure_mask(maps.labels_on_feature_grid(labels), 4)
    assert mask[1].sum() == 9
    assert mask[0].sum() == 0 and mask[2].sum() == 0


def test_feature_grid_samples_pixel_centres_and_treats_padding_as_background():
    # 6 x 3 slice padded to a 6 x 6 square, seen on a 3 x 3 feature grid: centres at rows/cols 1, 3, 5
    labels = np.arange(18, dtype=np.uint8).reshape(1, 6, 3) + 1
    maps = FindingMaps(np.zeros((1, 1, 3, 3), np.float32), SliceBox.square(6, 6))
    low = maps.labels_on_feature_grid(labels)
    expected = np.array([[[5, 0, 0], [11, 0, 0], [17, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(low, expected)


def test_feature_grid_of_a_spine_band_box_samples_inside_the_box_only():
    # a 6 x 6 slice; the band box starts one row above it and at column 2, 8 rows x 4 cols, on a 4 x 2 grid:
    # centres at box rows 1, 3, 5, 7 (slice rows 0, 2, 4, 6) and box cols 1, 3 (slice cols 3, 5)
    labels = np.arange(36, dtype=np.uint8).reshape(1, 6, 6) + 1
    maps = FindingMaps(np.zeros((1, 1, 4, 2), np.float32), SliceBox(-1, 2, 8, 4))
    low = maps.labels_on_feature_grid(labels)
    expected = np.array([[[4, 6], [16, 18], [28, 30], [0, 0]]], np.uint8)
    np.testing.assert_array_equal(low, expected)


def test_pool_of_a_label_map_without_structures_is_empty():
    maps = FindingMaps(np.ones((2, 5, 4, 4), np.float32), SliceBox.square(8, 8))
    assert maps.pool(np.zeros((2, 8, 8), np.uint8)) == {}


def test_label_map_with_another_slice_count_is_refused():
    maps = FindingMaps(np.zeros((2, 5, 4, 4), np.float32), SliceBox.square(8, 8))
    with pytest.raises(ValueError, match="slices"):
        maps.labels_on_feature_grid(np.zeros((3, 8, 8), np.uint8))


def test_findings_follow_the_voxels_of_the_delivered_level_not_the_raw_label():
    """The model called both L3 and L4 "L3"; counting splits them, and each delivered level is scored on
    its own voxels: the degeneration painted inside the true L4 goes to L4 only."""
    l3, l4 = ONT.by_level("L3", "vertebra").label, ONT.by_level("L4", "vertebra").label
    truth = spine(CANONICAL)
    raw = np.where(truth == l4, l3, truth).astype(np.uint8)
    logits = np.full((SLICES, len(FINDINGS), ROWS, COLS), -6.0, np.float32)
    logits[:, DEGENERATION][truth == l4] = 6.0  # feature grid = acquisition grid here (side = ROWS)
    maps = FindingMaps(_pad(logits), SliceBox.square(max(ROWS, COLS), max(ROWS, COLS)))
    raw_probs = {l3: {"vertebral_degeneration": 0.5}}  # pooled over both bodies: undecided
    result = postprocess(raw, raw_probs, ONT, {"vertebral_degeneration": 0.5}, grid(), maps)

    np.testing.assert_array_equal(result.labels, truth)
    degeneration = {lv.label: lv.findings[0] for lv in result.levels if lv.kind == "vertebra"}
    assert degeneration[l4].present and degeneration[l4].probability > 0.99
    assert not degeneration[l3].present and degeneration[l3].probability < 0.01


def test_without_finding_maps_the_raw_label_probabilities_are_delivered():
    l4 = ONT.by_level("L4", "vertebra").label
    result = postprocess(spine(CANONICAL), {l4: {"vertebral_degeneration": 0.8}}, ONT, {}, grid(), None)
    assert result.level(l4).findings[0].probability == pytest.approx(0.8)


def _pad(logits: np.ndarray) -> np.ndarray:
    """Zero-pad the columns to a square, as the model's input is padded."""
    side = max(ROWS, COLS)
    out = np.full((*logits.shape[:2], side, side), -6.0, np.float32)
    out[:, :, :ROWS, :COLS] = logits
    return out
