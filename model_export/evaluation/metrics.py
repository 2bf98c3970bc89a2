"""Overlap and detection metrics with their definitions stated where they are computed.

Dice and IoU are computed per structure per case on the original acquisition grid; a structure absent
from both the prediction and the truth of a case is skipped for that case (undefined, not 1). Means are
over cases. Findings are counted per level: one decision per (case, structure, finding) that the truth
states, with the structure present in the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.ontology import Ontology

DEFINITIONS = {
    "dice": "2|P∩T| / (|P|+|T|) per structure per case on the acquisition grid; skipped when both empty",
    "iou": "|P∩T| / |P∪T| per structure per case; skipped when both empty",
    "case_miou": "mean IoU over the structures defined in that case",
    "miou": "mean over cases of case_miou, with the SD over cases",
    "kind_miou": "as miou, over three classes (sacrum, any vertebra, any disc) with the level ignored: how well "
                 "the model outlines structures, apart from naming their level",
    "miou_loss": "1 - case_miou split over its structures by cause, then averaged over cases: 'outline' where "
                 "most of the structure's true voxels carry its own label (1 - IoU), 'misnamed' where most carry "
                 "another structure's label (a level named wrong), 'missed' where most are background, 'extra' "
                 "for a structure predicted but absent from the truth (IoU 0)",
    "findings": "one decision per (case, level, finding) stated by the truth; recall = TP/(TP+FN), "
                "precision = TP/(TP+FP), FPR = FP/(FP+TN)",
}


def _joint_histogram(pred: np.ndarray, truth: np.ndarray, labels: list[int]) -> np.ndarray:
    """(n, n) voxel counts of (truth label, predicted label) pairs, n above every label seen."""
    n = int(max(labels + [int(pred.max(initial=0)), int(truth.max(initial=0))])) + 1
    return np.bincount(truth.astype(np.int64).ravel() * n + pred.astype(np.int64).ravel(),
                       minlength=n * n).reshape(n, n)


def overlap_per_structure(pred: np.ndarray, truth: np.ndarray, labels: list[int]
                          ) -> dict[int, tuple[float, float]]:
    """label -> (Dice, IoU) for labels present in prediction or truth."""
    return _overlap(_joint_histogram(pred, truth, labels), labels)


def _overlap(joint: np.ndarray, labels: list[int]) -> dict[int, tuple[float, float]]:
    out: dict[int, tuple[float, float]] = {}
    for label in labels:
        inter = float(joint[label, label])
        t = float(joint[label].sum())
        p = float(joint[:, label].sum())
        if t + p == 0:
            continue
        out[label] = (2 * inter / (t + p), inter / (t + p - inter))
    return out


LOSS_CAUSES = ("outline", "misnamed", "missed", "extra")


def miou_loss_by_cause(pred: np.ndarray, truth: np.ndarray, labels: list[int]) -> dict[str, float]:
    """How one case's 1 - mIoU splits by cause, per DEFINITIONS["miou_loss"]; the parts sum to 1 - case mIoU."""
    return overlap_and_loss(pred, truth, labels)[1]


def overlap_and_loss(pred: np.ndarray, truth: np.ndarray, labels: list[int]
                     ) -> tuple[dict[int, tuple[float, float]], dict[str, float]]:
    """:func:`overlap_per_structure` and :func:`miou_loss_by_cause` from one pass over the volumes."""
    joint = _joint_histogram(pred, truth, labels)
    scores = _overlap(joint, labels)
    loss = dict.fromkeys(LOSS_CAUSES, 0.0)
    for label, (_, iou) in scores.items():
        if joint[label].sum() == 0:
            cause = "extra"
        else:
            most = int(np.argmax(joint[label]))  # what most of the true voxels were called
            cause = "outline" if most == label else "missed" if most == 0 else "misnamed"
        loss[cause] += (1.0 - iou) / len(scores)
    return scores, loss


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def add(self, predicted: bool, actual: bool) -> None:
        if predicted and actual:
            self.tp += 1
        elif predicted:
            self.fp += 1
        elif actual:
            self.fn += 1
        else:
            self.tn += 1

    def merged(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn)

    def rates(self) -> dict[str, float | int | None]:
        def ratio(a: int, b: int) -> float | None:
            return a / b if b else None

        return {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn,
                "recall": ratio(self.tp, self.tp + self.fn), "precision": ratio(self.tp, self.tp + self.fp),
                "fpr": ratio(self.fp, self.fp + self.tn)}


def best_f1_threshold(probs: np.ndarray, actual: np.ndarray, default: float = 0.5) -> float:
    """The decision threshold with the best F1 on a validation set (default when it has no positives)."""
    if actual.sum() == 0 or len(probs) == 0:
        return default
    best, best_f1 = default, -1.0
    values = np.unique(probs)  # midpoints between observed scores: rare findings often score below 0.05
    for t in np.sort(np.concatenate([np.linspace(0.05, 0.95, 19), (values[1:] + values[:-1]) / 2])):
        pred = probs >= t
        tp = float((pred & actual).sum())
        f1 = 2 * tp / (pred.sum() + actual.sum()) if (pred.sum() + actual.sum()) else 0.0
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return best


def kind_of_label(ontology: Ontology) -> dict[int, int]:
    """Structure label -> 1-based index of its kind (sacrum, vertebra, disc), for DEFINITIONS["kind_miou"]."""
    kinds = sorted({s.kind for s in ontology.structures})
    return {s.label: kinds.index(s.kind) + 1 for s in ontology.structures}


def kind_map(labels: np.ndarray, kinds: dict[int, int]) -> np.ndarray:
    """Labels replaced by their kind index from :func:`kind_of_label`; background stays 0."""
    lut = np.zeros(256, dtype=np.uint8)
    for label, kind in kinds.items():
        lut[label] = kind
    return lut[labels]
