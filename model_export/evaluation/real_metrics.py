"""Scores on real scans with partial labels: what each case's labels can say, and nothing more.

- **Discs** (disc-labelled cases): Dice by level name, mean over the labelled discs; and level-free, each
  labelled disc against the predicted disc that overlaps it most, whatever it is called.
- **Vertebral bodies**: a body is *named right* when at least ``MIN_BODY_COVER`` of its voxels carry
  labels and most of those carry its own level; *body recall* is the share of the body's voxels given
  its level. A study is right when every labelled body is named right. Where the source does not know
  the levels (bodies counted from the bottom), the names are scored under the one consecutive run that
  fits best, so what is measured is that the bodies are found, one name each, in order.
- **Labels on soft tissue**: predicted voxels more than ``real_cases.SOFT_TISSUE_MARGIN_MM`` in front of the
  labelled structures at their height, where nothing of the ontology lies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from model_export.data import Case
from model_export.real_cases import RANK_BASE, anterior_background
from service.ontology import Ontology

MIN_BODY_COVER = 0.25
"""Share of a body's voxels that must carry some predicted label before the body counts as found."""


@dataclass
class RealCaseScore:
    name: str
    kind: str
    """"discs", "bodies" (levels known) or "ranked bodies" (levels unknown)."""
    disc_dice: float | None = None
    disc_dice_level_free: float | None = None
    bodies: int = 0
    bodies_named_right: int = 0
    body_recall: float | None = None
    soft_tissue_voxels: int = 0
    delivered: list[str] = field(default_factory=list)
    """Names of the structures in the prediction, cranial to caudal."""

    @property
    def all_bodies_right(self) -> bool | None:
        return None if self.bodies == 0 else self.bodies_named_right == self.bodies

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "all_bodies_right": self.all_bodies_right}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def disc_scores(pred: np.ndarray, truth: np.ndarray, ontology: Ontology) -> tuple[float, float]:
    """(Dice by level name, level-free Dice), each the mean over the discs the truth labels."""
    disc_labels = [s.label for s in ontology.of_kind("disc")]
    by_name, level_free = [], []
    for label in sorted(set(np.unique(truth).tolist()) & set(disc_labels)):
        true_mask = truth == label
        by_name.append(dice(pred == label, true_mask))
        overlap = pred[true_mask]
        overlap = overlap[np.isin(overlap, disc_labels)]
        best = int(np.bincount(overlap).argmax()) if overlap.size else None
        level_free.append(dice(pred == best, true_mask) if best is not None else 0.0)
    return float(np.mean(by_name)), float(np.mean(level_free))


def body_scores(pred: np.ndarray, truth: np.ndarray, names: dict[int, int]) -> tuple[int, int]:
    """(bodies named right, body voxels given their level) with ``names``: truth value -> the right label."""
    right, recalled = 0, 0
    for value, label in names.items():
        inside = pred[truth == value]
        recalled += int((inside == label).sum())
        labelled = inside[inside > 0]
        if labelled.size >= MIN_BODY_COVER * inside.size and labelled.size:
            right += int(np.bincount(labelled).argmax() == label)
    return right, recalled


def ranked_names(pred: np.ndarray, truth: np.ndarray, chain: tuple[int, ...]) -> dict[int, int]:
    """truth rank value -> label under the consecutive run (offset into ``chain``) that recalls most voxels."""
    ranks = sorted(v for v in np.unique(truth).tolist() if v > RANK_BASE)
    best: dict[int, int] = {}
    best_recall = -1
    for offset in range(len(chain) - len(ranks) + 1):
        names = {v: chain[v - RANK_BASE - 1 + offset] for v in ranks}
        recall = sum(int((pred[truth == v] == label).sum()) for v, label in names.items())
        if recall > best_recall:
            best, best_recall = names, recall
    return best


def score_real_case(case: Case, pred: np.ndarray, ontology: Ontology, chain: tuple[int, ...]) -> RealCaseScore:
    """Scores of one prediction (ontology labels on the case's grid) against the case's partial labels."""
    truth = case.labels
    values = sorted(v for v in np.unique(truth).tolist() if v > 0)
    disc_labels = {s.label for s in ontology.of_kind("disc")}
    order = sorted((float(np.argwhere(pred == s.label)[:, 1].mean()), s.name)
                   for s in ontology.structures if (pred == s.label).any())
    score = RealCaseScore(case.name, "bodies", delivered=[n for _, n in order])
    score.soft_tissue_voxels = int(np.logical_and(pred > 0, anterior_background(truth, case.pixel_spacing)).sum())
    if values and set(values) <= disc_labels:
        score.kind = "discs"
        score.disc_dice, score.disc_dice_level_free = disc_scores(pred, truth, ontology)
        return score
    if not case.level_known:
        score.kind = "ranked bodies"
        names = ranked_names(pred, truth, chain)
    else:
        names = {v: v for v in values}
    score.bodies = len(names)
    score.bodies_named_right, recalled = body_scores(pred, truth, names)
    score.body_recall = recalled / max(1, int(np.isin(truth, list(names)).sum()))
    return score


def summarise_real(scores: list[RealCaseScore]) -> dict[str, Any]:
    """Pooled figures over cases: the targets' quantities."""
    discs = [s for s in scores if s.kind == "discs"]
    bodies = [s for s in scores if s.bodies]
    known = [s for s in bodies if s.kind == "bodies"]

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    return {
        "cases": len(scores),
        "disc_dice": mean([s.disc_dice for s in discs if s.disc_dice is not None]),
        "disc_dice_level_free": mean([s.disc_dice_level_free for s in discs if s.disc_dice_level_free is not None]),
        "bodies_named_right": (sum(s.bodies_named_right for s in known) / sum(s.bodies for s in known))
        if known else None,
        "studies_all_bodies_right": mean([float(bool(s.all_bodies_right)) for s in known]),
        "ranked_studies_all_bodies_in_run": mean([float(bool(s.all_bodies_right)) for s in bodies
                                                  if s.kind == "ranked bodies"]),
        "body_recall": mean([s.body_recall for s in bodies if s.body_recall is not None]),
        "studies_without_soft_tissue_labels": mean([float(s.soft_tissue_voxels == 0) for s in scores]),
        "soft_tissue_voxels_median": float(np.median([s.soft_tissue_voxels for s in scores])) if scores else None,
    }


def case_metric(score: RealCaseScore) -> float:
    """One number per case for paired tests: disc Dice by name on disc cases, body recall on body cases."""
    value = score.disc_dice if score.kind == "discs" else score.body_recall
    return float(value) if value is not None else 0.0
