"""Outline refiner training: samples carry the crop's channels and the true structure, the validation score
reads the hint wherever the context slices put it, and a sample's slices may run either way."""

from __future__ import annotations

import numpy as np
import torch

from model_export.data import load_cases
from model_export.model.outline_refiner import OutlineRefinerConfig, OutlineRefinerNet
from model_export.training.outline_training import OutlineCase, draw_sample, validation_iou
from service.infer.outline_crops import OutlineSpec
from service.ontology import DEFAULT_ONTOLOGY

SPEC = OutlineSpec(size_mm=48.0, pixels=32, context_slices=1)


def test_a_sample_with_context_holds_t2_and_t1_on_three_slices_then_the_masks(tiny_cases):
    case = OutlineCase.of(load_cases(tiny_cases)[0], DEFAULT_ONTOLOGY)
    rng = np.random.default_rng(0)
    samples = [draw_sample(case, SPEC, rng) for _ in range(20)]
    assert all(x.shape == (SPEC.input_channels, 32, 32) == (8, 32, 32) and y.shape == (32, 32) for x, y in samples)
    hints = np.stack([x[6] for x, _ in samples])
    assert set(np.unique(hints)) <= {0.0, 1.0} and hints.any()
    assert not np.stack([x[6] * x[7] for x, _ in samples]).any()  # the structure and the others never overlap


def test_validation_scores_the_hint_channel_whatever_the_context():
    net = OutlineRefinerNet(OutlineRefinerConfig(widths=(4, 8), crop=SPEC))
    truth = torch.zeros(2, 32, 32)
    truth[:, 10:20, 8:24] = 1.0
    x = torch.rand(2, SPEC.input_channels, 32, 32)
    x[:, -2] = truth  # the hint is exactly the truth
    x[:, -1] = 0.0
    scores = validation_iou(net, (x, truth))
    assert scores["hint_iou"] == 1.0 and 0.0 <= scores["refined_iou"] <= 1.0
