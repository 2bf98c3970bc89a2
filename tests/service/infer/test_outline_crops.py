"""Outline refinement: crops map back onto the slice, a refiner that echoes its hint changes nothing, the
more confident structure takes a contested pixel, and a structure the refiner would erase is kept."""

from __future__ import annotations

import numpy as np
import pytest

from model_export.data import SAGITTAL_DIRECTION, sagittal_grid
from service.infer.outline_crops import (
    CropFrame,
    OutlineRefiner,
    OutlineSpec,
    context_slices,
    outline_jobs,
    refiner_input,
)
from service.infer.postprocess import postprocess
from service.ontology import DEFAULT_ONTOLOGY

SPEC = OutlineSpec(size_mm=48.0, pixels=48)
SACRUM, L5, L5_S1 = 1, 2, 11


def _grid(shape):
    return sagittal_grid(np.zeros(shape, np.uint8), (1.0, 1.0), 4.0, SAGITTAL_DIRECTION)


def _spine(shape=(5, 64, 64)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[1:4, 10:24, 16:40] = L5
    labels[1:4, 24:30, 16:40] = L5_S1
    labels[1:4, 30:46, 14:42] = SACRUM
    return labels


def _channels(labels):
    return np.stack([labels.astype(np.float32) / 20.0, np.zeros(labels.shape, np.float32)])


def _echo(inputs: np.ndarray) -> np.ndarray:
    """A refiner that draws exactly its hint."""
    return (inputs[:, 2] * 2.0 - 1.0) * 20.0


def test_reading_a_crop_back_returns_the_slice_it_was_cut_from():
    rows, cols = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    image = np.sin(rows / 7.0) + np.cos(cols / 5.0)
    frame = CropFrame.around(_grid((1, 64, 64)), np.array([30.0, 34.0]), SPEC)
    box = frame.footprint(image.shape)
    back = frame.read_back(frame.sample(image), box)
    inner = (slice(10, -10), slice(10, -10))
    assert np.abs(back[inner] - image[box][inner]).max() < 0.05


def test_crops_put_the_patients_back_to_the_right_and_feet_down():
    labels = np.zeros((1, 64, 64), np.uint8)
    labels[0, 40:, :] = 1  # inferior half (rows run towards the feet)
    frame = CropFrame.around(_grid(labels.shape), np.array([32.0, 32.0]), SPEC)
    crop = frame.sample(labels[0].astype(np.float32), order=0)
    assert crop[-5:].mean() == 1.0 and crop[:5].mean() == 0.0


def test_structures_are_refined_one_slice_beyond_each_end_with_the_neighbours_hint():
    labels = _spine()
    jobs = [j for j in outline_jobs(labels, _grid(labels.shape), [L5], SPEC)]
    assert [(j.slice_index, j.hint_slice) for j in jobs] == [(0, 1), (1, 1), (2, 2), (3, 3), (4, 3)]
    x = refiner_input(_channels(labels), labels, jobs[0])
    assert x.shape == (4, 48, 48) and x[2].any() and x[3].any() and not (x[2] * x[3]).any()


def test_context_slices_run_in_slice_order_and_repeat_the_end_slice_past_the_stack():
    assert context_slices(3, 5, 0) == [3]
    assert context_slices(2, 5, 1) == [1, 2, 3]
    assert context_slices(0, 5, 2) == [0, 0, 0, 1, 2]
    assert context_slices(4, 5, 1) == [3, 4, 4]


def test_with_context_the_refiner_reads_t2_then_t1_on_the_neighbour_slices_and_the_hint_of_its_own():
    labels = _spine()
    channels = np.stack([np.broadcast_to(np.arange(5, dtype=np.float32)[:, None, None], labels.shape),
                         np.broadcast_to(10 + np.arange(5, dtype=np.float32)[:, None, None], labels.shape)])
    spec = OutlineSpec(size_mm=48.0, pixels=48, context_slices=1)
    job = next(j for j in outline_jobs(labels, _grid(labels.shape), [L5], spec) if j.slice_index == 2)
    x = refiner_input(channels, labels, job, spec.context_slices)
    assert x.shape == (spec.input_channels, 48, 48) == (8, 48, 48)
    centre = (24, 24)  # inside the slice: the sampled values are the slice numbers
    assert [float(x[c][centre]) for c in range(6)] == [1.0, 2.0, 3.0, 11.0, 12.0, 13.0]
    assert x[6].any() and x[7].any() and not (x[6] * x[7]).any()


def test_an_outline_crop_from_a_card_without_context_reads_the_slice_alone():
    spec = OutlineSpec.from_card({"size_mm": 120.0, "pixels": 128})
    assert spec.context_slices == 0 and spec.input_channels == 4
    assert OutlineSpec.from_card(OutlineSpec(context_slices=2).to_dict()).input_channels == 12


def test_a_refiner_that_echoes_its_hint_keeps_the_delivered_outlines():
    labels = _spine()
    refiner = OutlineRefiner(_channels(labels), _grid(labels.shape), SPEC, [L5, L5_S1], _echo)
    out = refiner.refine(labels)
    inner = slice(1, 4)
    assert (out[inner] == labels[inner]).mean() > 0.99
    assert (out == SACRUM).sum() == (labels == SACRUM).sum()  # the sacrum is never redrawn
    assert (out[0] == L5).sum() > 0.9 * (labels[1] == L5).sum()  # drawn onto the neighbour slice


def test_the_more_confident_structure_takes_a_contested_pixel():
    labels = _spine()

    def bold_disc(inputs: np.ndarray) -> np.ndarray:
        grown = np.maximum(inputs[:, 2], np.roll(inputs[:, 2], -2, axis=1))  # 2 rows more, towards the head
        is_disc = np.array([x[2].sum() < 200 for x in inputs])  # the disc's hint is the smaller
        return np.where(is_disc[:, None, None], (grown * 2 - 1) * 30.0, (inputs[:, 2] * 2 - 1) * 5.0)

    out = OutlineRefiner(_channels(labels), _grid(labels.shape), SPEC, [L5, L5_S1], bold_disc).refine(labels)
    assert (out[2] == L5_S1).sum() > (labels[2] == L5_S1).sum()
    assert (out[2, 22:24, 16:40] == L5_S1).mean() > 0.9  # the disc took L5's lowest rows


def test_a_structure_the_refiner_would_erase_keeps_its_delivered_outline():
    labels = _spine()
    out = OutlineRefiner(_channels(labels), _grid(labels.shape), SPEC, [L5, L5_S1],
                         lambda x: np.full((len(x), 48, 48), -30.0, np.float32)).refine(labels)
    np.testing.assert_array_equal(out, labels)


def test_postprocessing_measures_and_reports_the_redrawn_outlines():
    labels = _spine()

    class Shrink:
        def refine(self, delivered: np.ndarray) -> np.ndarray:
            out = delivered.copy()
            out[:, 10:14][out[:, 10:14] == L5] = 0
            return out

    grid = _grid(labels.shape)
    plain = postprocess(labels, {}, DEFAULT_ONTOLOGY, {}, grid)
    redrawn = postprocess(labels, {}, DEFAULT_ONTOLOGY, {}, grid, outline_refiner=Shrink())
    assert redrawn.outlines_refined and not plain.outlines_refined
    assert redrawn.level(L5).voxels == plain.level(L5).voxels - 3 * 4 * 24
    assert redrawn.level(L5).centroid_mm != plain.level(L5).centroid_mm
    assert redrawn.to_dict()["outlines_refined"] is True


@pytest.mark.parametrize("bad", [{"size_mm": 120, "pixels": 100}, {"size_mm": 0, "pixels": 64},
                                 {"size_mm": 120}, {"size_mm": 120, "pixels": 128, "context_slices": 4}])
def test_a_malformed_outline_crop_is_refused(bad):
    with pytest.raises((ValueError, KeyError)):
        OutlineSpec.from_card(bad)
