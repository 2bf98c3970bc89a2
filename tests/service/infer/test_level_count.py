"""Counting never delivers a column out of order, whatever noise the model paints (a property over random
label maps)."""

from __future__ import annotations

import numpy as np
import pytest

from service.infer.postprocess import postprocess
from service.ontology import DEFAULT_ONTOLOGY as ONT
from tests.service.encode.label_factory import CANONICAL, DISC_ROWS, VERTEBRA_ROWS
from tests.service.infer.test_postprocess import COLS, ROWS, SLICES, _with_arches, grid

BODY_COLS = slice(4, 24)
"""_with_arches puts the vertebral bodies and discs in these columns and the arches behind them."""
VERTEBRAE = [s.label for s in ONT.of_kind("vertebra")]


def _noisy_column(seed: int) -> np.ndarray:
    """A lumbar column with arches, then what a poor model adds: blobs of any vertebra label behind the
    column, patches of a wrong vertebra label inside a body, and sometimes a disc left out."""
    rng = np.random.default_rng(seed)
    labels = _with_arches(CANONICAL)
    for _ in range(int(rng.integers(1, 8))):
        value = rng.choice(VERTEBRAE)
        s, r, c = rng.integers(0, SLICES - 1), rng.integers(0, ROWS - 20), rng.integers(28, COLS - 6)
        labels[s:s + 2, r:r + rng.integers(4, 20), c:c + rng.integers(2, 10)] = value
    for _ in range(int(rng.integers(0, 3))):
        r, c = rng.integers(0, ROWS - 6), 4 + rng.integers(0, 10)
        patch = labels[1:4, r:r + 6, c:BODY_COLS.stop]
        patch[np.isin(patch, VERTEBRAE)] = rng.choice(VERTEBRAE)
    if rng.random() < 0.3:
        disc = rng.choice([s.label for s in ONT.of_kind("disc")][1:4])
        labels[labels == disc] = 0
    return labels


def _rows(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask.any(axis=(0, 2)))


@pytest.mark.parametrize("seed", range(120))
def test_delivered_bodies_and_discs_follow_the_column_and_each_arch_stays_by_its_body(seed):
    labels = _noisy_column(seed)
    result = postprocess(labels, {}, ONT, {}, grid())
    removed = sum(c.voxels for c in result.changes if c.kind in ("dropped", "fragment_removed"))
    assert sum(lv.voxels for lv in result.levels) + removed == np.count_nonzero(labels)  # nothing lost unsaid
    order = [s.label for s in ONT.caudal_to_cranial()]
    column = result.labels[:, :, BODY_COLS]
    placed = [(float(_rows(column == lv.label).mean()), order.index(lv.label)) for lv in result.levels
              if (column == lv.label).any()]
    ranks = [rank for _, rank in sorted(placed, reverse=True)]  # caudal (lower rows) first
    assert ranks == sorted(ranks)
    for lv in result.levels:
        body, arch = _rows(column == lv.label), _rows(result.labels[:, :, BODY_COLS.stop:] == lv.label)
        if lv.kind != "vertebra" or body.size == 0 or arch.size == 0:
            continue
        level = VERTEBRA_ROWS + DISC_ROWS
        assert arch.min() >= body.min() - level  # where a disc was missed, planes cannot split the arches
        assert arch.max() <= body.max() + level + DISC_ROWS  # a spinous process slopes over the level below


def test_two_vertebrae_between_discs_named_in_reverse_by_the_model_are_delivered_in_order():
    """Where the model missed the disc between them, the two bodies share one interval and the model's own
    labels divide it; a model that swapped them must not get them delivered upside down."""
    disc = ONT.by_level("L3/L4", "disc").label
    l3, l4 = ONT.by_level("L3", "vertebra").label, ONT.by_level("L4", "vertebra").label
    swapped = [{l3: l4, l4: l3}.get(v, v) for v in CANONICAL if v != disc]
    labels = _with_arches(swapped)
    result = postprocess(labels, {}, ONT, {}, grid())
    column = result.labels[:, :, BODY_COLS]
    assert _rows(column == l4).mean() > _rows(column == l3).mean()  # L4 lower (rows grow caudally)
    assert [lv.label for lv in result.levels] == [v for v in CANONICAL if v != disc]
