"""Cases as model-size tensors, prepared once so that each training step only slices and augments."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model_export.data import Case
from service.infer.input_view import InputView, crop_to_box
from service.infer.model import model_input, pad_to_square
from service.ontology import Ontology


@dataclass
class PreparedCase:
    name: str
    image: torch.Tensor
    """(n, 2, S, S) float32, [T2, T1], normalised and resized exactly as the service does."""
    target: torch.Tensor
    """(n, S, S) int64 labels, nearest-neighbour resized."""
    labelled: torch.Tensor
    """(C,) bool over output channels; channel 0 (background) is always labelled."""
    finding_targets: torch.Tensor
    """(K, F) float."""
    finding_known: torch.Tensor
    """(K, F) bool: the source states this finding at this structure."""
    has_t2: bool
    has_t1: bool
    band_image: torch.Tensor | None = None
    """(n, 2, H, W): the spine band view around the true labels, for a model that has one."""
    band_target: torch.Tensor | None = None


def resize_labels_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest neighbour with half-pixel centres, matching the antialiased image resize's sampling grid."""
    rows = np.minimum(((np.arange(size[0]) + 0.5) * labels.shape[1] / size[0]).astype(int), labels.shape[1] - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * labels.shape[2] / size[1]).astype(int), labels.shape[2] - 1)
    return labels[:, rows][:, :, cols]


def prepare_case(case: Case, view: InputView, ontology: Ontology) -> PreparedCase:
    """``view``: the model's input view (``ModelConfig.view()``).

    The band box comes from the true labels here; at inference it comes from the survey's labels, and the
    augmentation's random scale and shift stand in for the difference.
    """
    image = model_input(case.t2, case.t1, view.survey_size)
    target = resize_labels_nearest(pad_to_square(case.labels), view.survey_size)
    band_image = band_target = None
    if view.band_size is not None:
        box = view.band_box(case.labels)
        band_image = torch.from_numpy(model_input(case.t2, case.t1, view.band_size, box=box))
        band_target = torch.from_numpy(
            resize_labels_nearest(crop_to_box(case.labels, box), view.band_size).astype(np.int64))
    k, f = len(ontology.structures), len(ontology.findings)
    labelled = torch.zeros(k + 1, dtype=torch.bool)
    labelled[0] = True
    for label in case.labelled:
        labelled[label] = True
    targets = torch.zeros(k, f)
    known = torch.zeros(k, f, dtype=torch.bool)
    keys = [x.key for x in ontology.findings]
    for label, values in case.findings.items():
        for key, present in values.items():
            if key in keys:
                targets[label - 1, keys.index(key)] = float(present)
                known[label - 1, keys.index(key)] = True
    return PreparedCase(case.name, torch.from_numpy(image), torch.from_numpy(target.astype(np.int64)),
                        labelled, targets, known, case.t2 is not None, case.t1 is not None, band_image, band_target)
