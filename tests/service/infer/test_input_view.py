"""The spine band view: which box of each slice the model reads, and how labels come back from it."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import ModelDirectoryError
from service.infer.input_view import InputView, SliceBox, crop_to_box, paste_from_box, spine_band_box


def band_labels(rows: int = 200, cols: int = 200, first: int = 80, last: int = 119) -> np.ndarray:
    labels = np.zeros((3, rows, cols), dtype=np.uint8)
    labels[1, 10:190, first:last + 1] = 5
    return labels


def test_crop_to_box_fills_what_lies_outside_the_slice_with_zeros():
    volume = np.arange(1, 2 * 4 * 5 + 1, dtype=np.float32).reshape(2, 4, 5)
    box = SliceBox(-1, 3, 4, 4)
    out = crop_to_box(volume, box)
    assert out.shape == (2, 4, 4)
    assert (out[:, 0] == 0).all() and (out[:, :, 2:] == 0).all()
    np.testing.assert_array_equal(out[:, 1:, :2], volume[:, :3, 3:5])


def test_paste_from_box_puts_back_what_crop_to_box_took():
    volume = np.random.default_rng(0).integers(1, 9, size=(2, 6, 7)).astype(np.uint8)
    box = SliceBox(2, -2, 6, 5)
    restored = np.zeros_like(volume)
    paste_from_box(restored, crop_to_box(volume, box), box)
    np.testing.assert_array_equal(restored[:, 2:, :3], volume[:, 2:, :3])
    assert (restored[:, :2] == 0).all() and (restored[:, :, 3:] == 0).all()


def test_square_box_is_the_padding_to_a_square_at_the_bottom_and_right():
    assert SliceBox.square(30, 40) == SliceBox(0, 0, 40, 40)
    padded = crop_to_box(np.ones((1, 30, 40), np.float32), SliceBox.square(30, 40))
    assert padded.shape == (1, 40, 40) and padded[0, 30:].sum() == 0 and padded[0, :30].all()


def test_band_box_keeps_the_full_height_and_the_inputs_aspect_ratio_around_the_labels():
    box = spine_band_box(band_labels(), (224, 128), margin=0.06)
    assert box.row0 == 0 and box.rows == 200
    assert box.cols == round(200 * 128 / 224)
    assert box.col0 <= 80 - 12 and box.col0 + box.cols >= 120 + 12  # the band and its margins


def test_band_box_grows_taller_centred_when_the_band_is_too_wide_for_the_aspect_ratio():
    box = spine_band_box(band_labels(first=20, last=179), (224, 128), margin=0.05)
    assert box.rows > 200 and box.row0 == (200 - box.rows) // 2
    assert box.cols >= 160 + 20 and abs(box.cols / box.rows - 128 / 224) < 0.01


def test_band_box_stays_inside_a_slice_that_is_wide_enough():
    box = spine_band_box(band_labels(first=2, last=30), (224, 128), margin=0.06)
    assert box.col0 == 0
    box = spine_band_box(band_labels(first=170, last=198), (224, 128), margin=0.06)
    assert box.col0 + box.cols == 200


def test_band_box_ignores_a_few_stray_voxels():
    labels = band_labels()
    labels[1, 100, 5] = 3  # one voxel far in front of the spine
    assert spine_band_box(labels, (224, 128), 0.06) == spine_band_box(band_labels(), (224, 128), 0.06)


def test_band_box_without_any_label_holds_the_whole_slice_at_the_inputs_aspect_ratio():
    box = spine_band_box(np.zeros((2, 40, 30), np.uint8), (224, 128), 0.06)
    assert box.col0 <= 0 and box.col0 + box.cols >= 30 and box.row0 <= 0 and box.row0 + box.rows >= 40
    assert abs(box.cols / box.rows - 128 / 224) < 0.02


def test_view_round_trips_through_the_model_card():
    view = InputView((160, 160), (224, 128), 0.05)
    card = view.to_card()
    assert card["size"] == [160, 160] and card["spine_band"] == {"size": [224, 128], "margin": 0.05}
    assert InputView.from_card(card) == view


def test_a_card_from_before_the_band_is_a_square_view():
    view = InputView.from_card({"size": [160, 160]})
    assert not view.has_band
    with pytest.raises(ValueError):
        view.band_box(band_labels())


def test_model_directory_with_a_malformed_band_is_refused(tmp_path):
    import json

    from service.infer.model import OnnxModel
    from service.ontology import DEFAULT_ONTOLOGY

    card = {"ontology": DEFAULT_ONTOLOGY.to_dict(), "input": {"size": [64, 64], "spine_band": {"size": [96]}}}
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirectoryError, match="malformed"):
        OnnxModel.load(tmp_path)


def test_band_box_leaves_out_a_separate_labelled_blob_in_front_of_the_spine():
    labels = band_labels()
    labels[1, 120:150, 10:40] = 7  # 900 voxels of "L1" over the bowel, not touching the column
    assert spine_band_box(labels, (224, 128), 0.06) == spine_band_box(band_labels(), (224, 128), 0.06)


def test_band_box_spans_both_halves_of_a_column_the_model_broke():
    labels = np.zeros((3, 200, 200), dtype=np.uint8)
    labels[1, 10:90, 60:100] = 5
    labels[1, 110:190, 100:140] = 6  # the lower half sits further back, not touching the upper
    box = spine_band_box(labels, (224, 128), 0.0)
    assert box.col0 <= 60 and box.col0 + box.cols >= 140


def test_a_box_wholly_outside_the_slice_crops_to_zeros_and_pastes_nothing():
    volume = np.ones((1, 4, 4), np.uint8)
    box = SliceBox(10, -20, 3, 5)
    assert crop_to_box(volume, box).shape == (1, 3, 5) and not crop_to_box(volume, box).any()
    paste_from_box(volume, np.full((1, 3, 5), 9, np.uint8), box)
    assert (volume == 1).all()
