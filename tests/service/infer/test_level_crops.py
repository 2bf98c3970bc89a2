"""Level crops: the canal always on the right and the feet always down, zeros off the volume, one crop per
delivered disc or vertebra; a malformed crop in the card is refused at load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_export.data import SAGITTAL_DIRECTION, sagittal_grid
from service.errors import ModelDirectoryError
from service.infer.level_crops import CroppedLevels, CropSpec, crop_slices, scored_labels, structure_centres
from service.infer.model import OnnxModel, normalised_channels
from service.ontology import DEFAULT_ONTOLOGY

SPEC = CropSpec(size_mm=32.0, pixels=32, slices=3)


def _dot_volume(posterior_mm: float, inferior_mm: float, flip_cols: bool, flip_rows: bool):
    """A (5, 64, 64) volume at 1 mm with one bright voxel offset from the centre, and its grid.

    Flipping an axis reverses the pixel order and the matching direction cosine, so the patient
    position of every voxel stays where it was: the crop must not change.
    """
    direction = SAGITTAL_DIRECTION.copy()  # columns posterior, rows inferior
    volume = np.zeros((5, 64, 64), np.float32)
    row, col = 32 + int(inferior_mm), 32 + int(posterior_mm)
    if flip_rows:
        row, direction[:, 1] = 63 - row, -direction[:, 1]
    if flip_cols:
        col, direction[:, 0] = 63 - col, -direction[:, 0]
    volume[2, row, col] = 1.0
    return volume, sagittal_grid(volume, (1.0, 1.0), 4.0, direction)


@pytest.mark.parametrize("flip_cols", [False, True])
@pytest.mark.parametrize("flip_rows", [False, True])
def test_crop_puts_the_back_to_the_right_and_the_feet_down_whatever_the_pixel_order(flip_cols, flip_rows):
    volume, grid = _dot_volume(posterior_mm=8, inferior_mm=5, flip_cols=flip_cols, flip_rows=flip_rows)
    centre = np.array([2.0, 63 - 32.0 if flip_rows else 32.0, 63 - 32.0 if flip_cols else 32.0])
    crop = crop_slices(np.stack([volume, volume]), grid, centre, SPEC)
    assert crop.shape == (3, 2, 32, 32)
    row, col = np.unravel_index(np.argmax(crop[1, 0]), crop[1, 0].shape)
    # 1 mm a pixel, the crop centre between pixels 15 and 16: 8 mm back is column ~23.5, 5 mm down row ~20.5
    assert abs(col - 23.5) <= 1 and abs(row - 20.5) <= 1
    assert crop[0].max() == 0 and crop[2].max() == 0  # the dot is on the middle slice only


def test_crop_rotation_turns_the_offset_about_the_centre():
    volume, grid = _dot_volume(posterior_mm=8, inferior_mm=0, flip_cols=False, flip_rows=False)
    crop = crop_slices(np.stack([volume, volume]), grid, np.array([2.0, 32.0, 32.0]), SPEC, angle_deg=90.0)
    row, col = np.unravel_index(np.argmax(crop[1, 0]), crop[1, 0].shape)
    assert abs(col - 15.5) <= 1 and abs(row - 7.5) <= 1  # the crop turned a quarter: back is now up


def test_slices_beyond_the_volume_are_zeros():
    volume = np.ones((5, 40, 40), np.float32)
    grid = sagittal_grid(volume, (1.0, 1.0), 4.0, SAGITTAL_DIRECTION)
    crop = crop_slices(np.stack([volume, volume]), grid, np.array([0.0, 20.0, 20.0]), SPEC)
    assert crop[0].max() == 0 and crop[1].min() > 0  # the slice before the first does not exist


def test_cropped_levels_score_each_delivered_disc_and_vertebra_once():
    labels = np.zeros((5, 64, 64), np.uint8)
    vertebra = next(s for s in DEFAULT_ONTOLOGY.structures if s.kind == "vertebra")
    disc = next(s for s in DEFAULT_ONTOLOGY.structures if s.kind == "disc")
    sacrum = next(s for s in DEFAULT_ONTOLOGY.structures if s.kind == "sacrum")
    labels[1:4, 10:20, 20:40] = vertebra.label
    labels[1:4, 22:26, 20:40] = disc.label
    labels[1:4, 40:60, 20:40] = sacrum.label
    image = np.random.default_rng(0).random(labels.shape).astype(np.float32) * 100
    grid = sagittal_grid(labels, (1.0, 1.0), 4.0, SAGITTAL_DIRECTION)
    seen = []

    def classify(crops):
        seen.append(crops.shape)
        return np.tile(np.arange(5, dtype=np.float32), (len(crops), 1))

    levels = CroppedLevels(normalised_channels(image, None), grid, SPEC, scored_labels(DEFAULT_ONTOLOGY), classify)
    scores = levels.pool(labels)
    assert sorted(scores) == sorted([vertebra.label, disc.label])  # the sacrum has no findings to score
    assert seen == [(2, 3, 2, 32, 32)]
    assert np.allclose(structure_centres(labels, [disc.label])[disc.label], [2.0, 23.5, 29.5])
    assert levels.pool(np.zeros_like(labels)) == {}


@pytest.mark.parametrize("crop", [{"size_mm": 64, "pixels": 4, "slices": 3}, {"size_mm": -1, "pixels": 80,
                                  "slices": 3}, {"size_mm": 64, "pixels": 80}, "64mm"])
def test_a_malformed_level_classifier_crop_is_refused_at_load(tmp_path, crop):
    card = {"ontology": DEFAULT_ONTOLOGY.to_dict(), "input": {"size": [64, 64]}, "level_classifier": {"crop": crop}}
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirectoryError, match="malformed"):
        OnnxModel.load(tmp_path)
