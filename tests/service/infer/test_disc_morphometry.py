"""Disc measurements on hand-made columns: bodies and discs are boxes whose back edge is column 39, so
every millimetre beyond it is known (0.8 mm per column, rows grow caudally, columns grow backwards)."""

from __future__ import annotations

import numpy as np
import pytest

from service.infer.disc_morphometry import measure_discs
from service.infer.postprocess import postprocess
from service.ontology import DEFAULT_ONTOLOGY as ONT
from tests.service.encode.label_factory import CANONICAL
from tests.service.infer.test_postprocess import SPACING, grid, spine

L45 = ONT.by_level("L4/L5", "disc").label
L4 = ONT.by_level("L4", "vertebra").label
BACK = 39
"""Last column of every body and disc."""


def _rows(labels: np.ndarray, label: int) -> np.ndarray:
    return np.flatnonzero((labels == label).any(axis=(0, 2)))


def test_discs_within_the_bodies_margin_measure_no_extent_and_no_migration():
    measured = measure_discs(spine(CANONICAL), ONT, grid())
    assert set(measured) == {s.label for s in ONT.of_kind("disc")} & set(CANONICAL)
    for m in measured.values():
        assert m.posterior_extent_mm == pytest.approx(0.0)
        assert m.migration_mm == 0.0


def test_a_focal_bump_behind_the_disc_measures_its_depth():
    labels = spine(CANONICAL)
    rows = _rows(labels, L45)
    labels[2, rows[0]:rows[-1] + 1, BACK + 1:BACK + 6] = L45  # 5 columns on the middle slice only
    m = measure_discs(labels, ONT, grid())[L45]
    assert m.posterior_extent_mm == pytest.approx(5 * SPACING[1])
    assert m.migration_mm <= 3 * SPACING[0]  # it stays at the disc's own height


def test_material_behind_the_body_above_measures_how_far_it_migrated():
    labels = spine(CANONICAL)
    rows = _rows(labels, L45)
    labels[2, rows[0] - 12:rows[-1] + 1, BACK + 1:BACK + 5] = L45  # up behind L4, 12 rows above the disc
    m = measure_discs(labels, ONT, grid())[L45]
    centre = (rows[0] + rows[-1]) / 2
    assert m.migration_mm == pytest.approx((centre - (rows[0] - 12)) * SPACING[0], abs=0.5)


def test_the_arch_behind_the_spinal_canal_is_not_taken_for_the_body_margin():
    labels = spine(CANONICAL)
    arch = labels[:, :, 10:14].copy()  # each level's label, moved behind a 4-column canal
    labels[:, :, BACK + 5:BACK + 9] = np.where(np.isin(arch, [s.label for s in ONT.of_kind("vertebra")]),
                                                   arch, 0)
    m = measure_discs(labels, ONT, grid())[L45]
    assert m.posterior_extent_mm == pytest.approx(0.0)


def test_a_disc_with_no_bone_next_to_it_is_not_measured():
    labels = spine(CANONICAL)
    labels[labels == L4] = 0
    labels[labels == ONT.by_level("L5", "vertebra").label] = 0
    assert L45 not in measure_discs(labels, ONT, grid())


def test_delivered_discs_carry_their_measurements_and_vertebrae_none():
    labels = spine(CANONICAL)
    rows = _rows(labels, L45)
    labels[2, rows[0]:rows[-1] + 1, BACK + 1:BACK + 4] = L45
    result = postprocess(labels, {}, ONT, {}, grid())
    assert result.level(L45).posterior_extent_mm == pytest.approx(3 * SPACING[1])
    assert result.level(L4).posterior_extent_mm is None


def test_disc_material_pushed_into_the_body_above_measures_its_depth_as_endplate_intrusion():
    labels = spine(CANONICAL)
    rows = _rows(labels, L45)
    labels[2, rows[0] - 6:rows[0], 22:28] = L45  # a Schmorl's node: 6 rows up into L4, mid-disc
    m = measure_discs(labels, ONT, grid())[L45]
    assert m.endplate_intrusion_mm == pytest.approx(6 * SPACING[0], abs=0.5)
    assert m.posterior_extent_mm == pytest.approx(0.0)
    flat = measure_discs(spine(CANONICAL), ONT, grid())[L45]
    assert flat.endplate_intrusion_mm == pytest.approx(0.0)
