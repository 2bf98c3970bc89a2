"""Cases as model-size tensors, prepared once so that each training step only slices and augments."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model_export.data import Case
from model_export.model.losses import CERTAIN_BACKGROUND, IGNORE_INDEX
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
    rank_count: int = 0
    """Vertebral bodies of unknown level in the case (labels RANK_BASE + 1 ...); 0 when levels are known."""


def resize_labels_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest neighbour with half-pixel centres, matching the antialiased image resize's sampling grid."""
    rows = np.minimum(((np.arange(size[0]) + 0.5) * labels.shape[1] / size[0]).astype(int), labels.shape[1] - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * labels.shape[2] / size[1]).astype(int), labels.shape[2] - 1)
    return labels[:, rows][:, :, cols]


POSTERIOR_EXTENT_MM = 60.0
"""How far behind a labelled vertebral body its posterior elements may reach: a body-only case's band box
is drawn around its bodies stretched back this far, as the served band is drawn around whole vertebrae."""


def training_target(case: Case) -> np.ndarray:
    """The case's labels as loss targets (uint8): a partial case's unknown voxels become IGNORE_INDEX,
    except those far in front of its labels, which are CERTAIN_BACKGROUND (real_cases.certain_background)."""
    if not case.partial:
        return case.labels
    from model_export.real_cases import certain_background

    target = np.full(case.labels.shape, IGNORE_INDEX, dtype=np.uint8)
    target[certain_background(case.labels, case.pixel_spacing)] = CERTAIN_BACKGROUND
    target[case.labels > 0] = case.labels[case.labels > 0]
    return target


def band_labels(case: Case) -> np.ndarray:
    """Labels to draw the band box around: a partial case's bodies stretched back to their posterior elements."""
    if not case.partial:
        return case.labels
    shift = int(round(POSTERIOR_EXTENT_MM / case.pixel_spacing[1]))
    out = case.labels > 0
    stretched = out.copy()
    for step in range(1, shift + 1):
        stretched[:, :, step:] |= out[:, :, :-step]
    return stretched.astype(np.uint8)


def prepare_case(case: Case, view: InputView, ontology: Ontology) -> PreparedCase:
    """``view``: the model's input view (``ModelConfig.view()``).

    The band box comes from the true labels here; at inference it comes from the survey's labels, and the
    augmentation's random scale and shift stand in for the difference.
    """
    image = model_input(case.t2, case.t1, view.survey_size)
    labels = training_target(case)
    target = resize_labels_nearest(pad_to_square(labels), view.survey_size)
    band_image = band_target = None
    if view.band_size is not None:
        box = view.band_box(band_labels(case))
        band_image = torch.from_numpy(model_input(case.t2, case.t1, view.band_size, box=box))
        band_target = torch.from_numpy(
            resize_labels_nearest(crop_to_box(labels, box), view.band_size).astype(np.int64))
    k, f = len(ontology.structures), len(ontology.findings)
    labelled = torch.zeros(k + 1, dtype=torch.bool)
    labelled[0] = True
    rank_count = 0
    if case.level_known:
        for label in case.labelled:
            labelled[label] = True
    else:  # ranked bodies: every name of the chain they may take is in play
        rank_count = len(case.labelled)
        for label in rank_chain(ontology):
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
                        labelled, targets, known, case.t2 is not None, case.t1 is not None, band_image, band_target,
                        rank_count)


def rank_chain(ontology: Ontology) -> tuple[int, ...]:
    """The names a run of bodies counted from the bottom may take: sacrum (S1), L5, L4, ... T9."""
    return tuple(s.label for s in ontology.caudal_to_cranial() if s.kind != "disc")
