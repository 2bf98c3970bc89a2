"""Rendering shortcuts taken for speed give the images the plain computation would."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import uniform_filter1d

from model_export.synth.geometry import SliceStack
from model_export.synth.render import (
    NORMAL_QUANTILES,
    acquire,
    partial_volume_sample,
    resample,
    texture_field,
    to_sitk,
)
from model_export.synth.study import healthy_canvas, plan_case, series_box

from .conftest import SEED, SMALL


def _stack(slices: int, rows: int = 64, cols: int = 64) -> SliceStack:
    centres = np.zeros((slices, 3))
    centres[:, 0] = np.arange(slices) * 4.0
    return SliceStack(rows, cols, 1.0, np.array([0.0, 1, 0]), np.array([0.0, 0, -1]), centres, 4.0)


def test_noise_table_is_a_standard_normal() -> None:
    assert abs(float(NORMAL_QUANTILES.mean())) < 1e-6
    assert abs(float(NORMAL_QUANTILES.std()) - 1.0) < 1e-4
    assert np.all(np.diff(NORMAL_QUANTILES) > 0) and NORMAL_QUANTILES[0] < -4.2


def test_acquire_gives_rayleigh_background_and_gaussian_signal_noise() -> None:
    """|S + n1 + i n2|: Rayleigh (mean sigma sqrt(pi/2)) where S = 0, about N(S, sigma) where S >> sigma."""
    stack, sigma, scale = _stack(4, 200, 200), 0.03, 2000.0
    dark = acquire(np.zeros((4, 200, 200), np.float32), stack, np.random.default_rng(1), (sigma, sigma), (0, 0),
                   scale).astype(float)
    assert abs(dark.mean() + 0.5 - sigma * scale * np.sqrt(np.pi / 2)) < 0.5  # astype truncates: + 0.5
    bright = acquire(np.ones((4, 200, 200), np.float32), stack, np.random.default_rng(2), (sigma, sigma), (0, 0),
                     scale).astype(float)
    for k in range(4):  # each slice has its own gain (a small slope along the stack)
        assert abs(bright[k].std() - sigma * scale) < 1.5
    assert bright.max() <= 4095


def test_acquire_is_deterministic_per_seed() -> None:
    image = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    a = acquire(image, _stack(3, 32, 32), np.random.default_rng(5), (0.01, 0.03), (0.1, 0.4), 2000.0)
    b = acquire(image, _stack(3, 32, 32), np.random.default_rng(5), (0.01, 0.03), (0.1, 0.4), 2000.0)
    assert a.dtype == np.uint16 and np.array_equal(a, b)


def test_texture_field_equals_repeating_both_axes_before_smoothing() -> None:
    for cell in (3, 12):
        shape = (2, 50, 37)
        coarse = np.random.default_rng(3).standard_normal((2, 50 // cell + 2, 37 // cell + 2)).astype(np.float32)
        plain = np.repeat(np.repeat(coarse, cell, axis=1), cell, axis=2)[:, :50, :37]
        plain = uniform_filter1d(uniform_filter1d(plain, cell, axis=1), cell, axis=2)
        assert np.array_equal(texture_field(shape, np.random.default_rng(3), cell), plain)


def test_series_box_samples_exactly_what_the_whole_fine_grid_gives() -> None:
    plan = plan_case(SEED, SMALL)
    canvas = healthy_canvas(plan, SMALL)
    lut = np.random.default_rng(0).random(32).astype(np.float32)
    packed = (canvas.label.astype(np.uint16) << 8) | canvas.tissue
    for stack in (plan.sag_t2, plan.sag_t1):
        box, origin = series_box(canvas, stack)
        whole = partial_volume_sample(lut[canvas.tissue], canvas.origin, canvas.spacing, stack)
        part = partial_volume_sample(lut[canvas.tissue[box]], origin, canvas.spacing, stack)
        assert np.array_equal(whole, part)
        nn_whole = resample(to_sitk(packed, canvas.origin, canvas.spacing), stack, sitk.sitkNearestNeighbor)
        nn_part = resample(to_sitk(np.ascontiguousarray(packed[box]), origin, canvas.spacing), stack,
                           sitk.sitkNearestNeighbor)
        assert np.array_equal(nn_whole, nn_part)


def test_random_contrast_is_seeded_and_keeps_the_label_map_exact() -> None:
    from dataclasses import replace

    from model_export.synth.study import synthesize_case

    randomised = replace(SMALL, random_contrast=1.0, include_axial=False, include_localizer=False)
    plain = synthesize_case(SEED, replace(randomised, random_contrast=0.0))
    first, again = synthesize_case(SEED, randomised), synthesize_case(SEED, randomised)
    for name in ("sag_t2", "sag_t1"):
        assert np.array_equal(first.series[name].labels, plain.series[name].labels)
        assert np.array_equal(first.series[name].pixels[0], again.series[name].pixels[0])
        assert not np.array_equal(first.series[name].pixels[0], plain.series[name].pixels[0])


def test_random_contrast_breaks_the_physical_order_of_tissues_in_some_draws() -> None:
    from model_export.synth.render import draw_contrast
    from model_export.synth.tissues import Tissue

    rng = np.random.default_rng(0)
    draws = [draw_contrast("T2", rng, random_share=1.0).lut for _ in range(50)]
    assert any(lut[Tissue.CSF] < lut[Tissue.MUSCLE] for lut in draws)
    assert all(lut[Tissue.AIR] <= 0.02 for lut in draws)
    ordered = [draw_contrast("T2", rng).lut for _ in range(50)]
    assert all(lut[Tissue.CSF] > lut[Tissue.MUSCLE] for lut in ordered)


def test_without_random_contrast_studies_are_those_of_before() -> None:
    """The random draw is taken only with a share above zero, so existing seeds render as they did."""
    from model_export.synth.render import draw_contrast

    a = draw_contrast("T1", np.random.default_rng(3))
    b = draw_contrast("T1", np.random.default_rng(3), random_share=0.0)
    assert np.array_equal(a.lut, b.lut)
