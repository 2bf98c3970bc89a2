"""Torch inference on one study, mirroring ``service.infer.model.OnnxModel.predict`` step for step.

Preprocessing is the service's own numpy code; the fusion step is the same ``FusionExport`` module that
becomes fusion_head.onnx. Evaluation and the export parity check both use this, so the label maps they
compare differ only by the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model_export.model.network import FusionExport, LumbarSegmenter
from service.infer.finding_maps import FindingMaps
from service.infer.input_view import InputView, SliceBox, paste_from_box, survey_slices
from service.infer.model import model_input, pool_findings, reference_volume, sigmoid


@dataclass
class TorchPrediction:
    labels: np.ndarray
    finding_logits: np.ndarray | None
    """(K, F) volume-level logits per structure, or None for a model without a finding head."""
    finding_maps: FindingMaps | None = None
    """Per-slice finding logits on the feature grid, for pooling inside delivered structures."""

    def finding_probs(self) -> np.ndarray | None:
        return None if self.finding_logits is None else sigmoid(self.finding_logits)


@torch.no_grad()
def predict_volume(model: nn.Module, t2: np.ndarray | None, t1: np.ndarray | None, view: InputView,
                   slice_batch: int = 8) -> TorchPrediction:
    """``view``: the model's :class:`InputView` (``ModelConfig.view()``)."""
    model.eval()
    box = SliceBox.square(*reference_volume(t2, t1).shape[1:])
    if view.band_size is None:
        return _predict_in_box(model, t2, t1, view.survey_size, box, slice_batch)
    survey = _predict_in_box(model, survey_slices(t2), survey_slices(t1), view.survey_size, box, slice_batch)
    return _predict_in_box(model, t2, t1, view.band_size, view.band_box(survey.labels), slice_batch)


def _predict_in_box(model: nn.Module, t2: np.ndarray | None, t1: np.ndarray | None, size: tuple[int, int],
                    box: SliceBox, slice_batch: int) -> TorchPrediction:
    x = torch.from_numpy(model_input(t2, t1, size, box=box))
    labels = np.zeros(reference_volume(t2, t1).shape, dtype=np.uint8)
    if not isinstance(model, LumbarSegmenter):
        for start in range(0, len(x), slice_batch):
            logits = model(x[start:start + slice_batch])["logits"]
            up = F.interpolate(logits, size=(box.rows, box.cols), mode="bilinear", align_corners=False)
            paste_from_box(labels[start:start + slice_batch], up.argmax(1).to(torch.uint8).numpy(), box)
        return TorchPrediction(labels, None)
    structures, findings = model.class_embeddings()
    fusion = FusionExport(model.fusion).eval()
    grid = torch.zeros(1, 1, box.rows, box.cols)
    class_mass, finding_mass, maps = [], [], []
    for start in range(0, len(x), slice_batch):
        features, pooled = model.image_encoder(x[start:start + slice_batch])
        lab, cm, fm, _, pixel_logits = fusion(features, pooled, structures, findings, grid)
        paste_from_box(labels[start:start + slice_batch], lab.numpy(), box)
        class_mass.append(cm.numpy())
        finding_mass.append(fm.numpy())
        maps.append(pixel_logits.numpy())
    logits = pool_findings(np.concatenate(class_mass), np.concatenate(finding_mass))
    return TorchPrediction(labels, logits, FindingMaps(np.concatenate(maps), box, fusion.fusion.pool_dilation))
