"""Run models on held-out cases and compute the paper's table (see metrics.DEFINITIONS).

A model is a checkpoint (``.pt``, any kind, run with torch) or a model directory (``model.json``, run
with the service's ONNX-only path). The first model is the reference the others are tested against.
With ``postprocess`` every model is also scored as the service delivers it: its label map and level
findings after ``service.infer.postprocess`` (levels counted from the sacrum, fragments removed).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_export.data import Case
from model_export.evaluation.metrics import (
    DEFINITIONS,
    LOSS_CAUSES,
    Counts,
    kind_map,
    kind_of_label,
    overlap_and_loss,
    overlap_per_structure,
)
from model_export.evaluation.stats import paired_comparison
from service.errors import ConfigError
from service.ontology import Ontology

log = logging.getLogger(__name__)
WORST_CASES_SHOWN = 3


@dataclass
class Predictor:
    name: str
    kind: str
    thresholds: dict[str, float]
    run: Any
    """callable(case) -> (labels, {structure label: {finding key: probability}} or None, FindingMaps or None)."""
    ontology: Ontology
    combiners: dict[str, Any] = field(default_factory=dict)
    """Disc finding combiners (service.infer.level_findings), applied to the delivered output only."""
    exclusive: tuple[tuple[str, ...], ...] = ()
    """Groups of findings of which a delivered level keeps at most one (the card's ``exclusive_findings``)."""
    outline_refiner: Any = None
    """callable(case) -> the model's outline refiner bound to the case, for the delivered output; None
    without one."""


@dataclass
class ModelResult:
    name: str
    kind: str
    case_names: list[str] = field(default_factory=list)
    case_miou: list[float] = field(default_factory=list)
    case_dice: list[float] = field(default_factory=list)
    per_structure: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    findings: dict[str, Counts] = field(default_factory=dict)
    seconds_per_case: list[float] = field(default_factory=list)
    case_kind_miou: list[float] = field(default_factory=list)
    case_miou_loss: list[dict[str, float]] = field(default_factory=list)
    postprocessed: bool = False
    worst_cases: list[CaseView] = field(default_factory=list)
    """The WORST_CASES_SHOWN cases with the lowest mIoU so far, lowest first, for the picture."""

    def remember_if_worst(self, view: CaseView) -> None:
        self.worst_cases = sorted([*self.worst_cases, view], key=lambda v: v.miou)[:WORST_CASES_SHOWN]


@dataclass(frozen=True)
class CaseView:
    """One sagittal slice of a case, the one where prediction and truth disagree on the most voxels."""

    name: str
    miou: float
    slice_index: int
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray

    @classmethod
    def of(cls, case: Case, prediction: np.ndarray, miou: float) -> CaseView:
        wrong = (prediction != case.labels).sum(axis=(1, 2))
        i = int(np.argmax(wrong))
        return cls(case.name, miou, i, case.reference[i], case.labels[i], prediction[i])


def load_predictor(path: Path, name: str | None = None) -> Predictor:
    path = Path(path)
    if path.is_dir() and (path / "model.json").is_file():
        from service.infer.level_crops import CroppedLevels
        from service.infer.level_findings import pooled_probs
        from service.infer.model import OnnxModel

        model = OnnxModel.load(path, intra_op_threads=2)

        def run_onnx(case: Case):
            pred = model.predict(case.t2, case.t1, case.pixel_spacing, grid=case.grid())
            if isinstance(pred.finding_maps, CroppedLevels):  # score the raw labels with it too, as torch does
                return pred.labels, pooled_probs(pred.finding_maps, pred.labels, model.ontology), pred.finding_maps
            return pred.labels, pred.finding_probs, pred.finding_maps

        refine_onnx = None
        if model.outline_crop is not None:
            def refine_onnx(case: Case):
                return model.outline_refiner(case.t2, case.t1, case.grid())

        return Predictor(name or path.name, f"{model.card['architecture']['kind']} (onnx)",
                         model.finding_thresholds, run_onnx, model.ontology, model.finding_combiners,
                         model.exclusive_findings, refine_onnx)
    if path.is_file():
        import torch

        from model_export.configs import RunConfig
        from model_export.model.level_classifier import cropped_levels, load_level_classifier
        from model_export.model.network import load_checkpoint
        from model_export.model.outline_refiner import load_outline_refiner, torch_outline_refiner
        from model_export.model.predict import predict_volume
        from service.infer.level_findings import combiners_from_card, exclusive_from_card, pooled_probs

        model, ckpt = load_checkpoint(path)
        ontology = Ontology.from_dict(ckpt["ontology"])
        view = RunConfig.from_dict(ckpt["run"]).model.view()
        classifier = load_level_classifier(ckpt)
        refiner_net = load_outline_refiner(ckpt)
        with torch.no_grad():
            finding_embeddings = model.class_embeddings()[1] if classifier is not None else None

        def run_torch(case: Case):
            pred = predict_volume(model, case.t2, case.t1, view)
            probs = pred.finding_probs()
            if probs is None:
                return pred.labels, None, None
            if classifier is not None:  # it scores the raw labels too, as run_onnx does
                levels = cropped_levels(classifier, finding_embeddings, case.t2, case.t1, case.grid(), ontology)
                return pred.labels, pooled_probs(levels, pred.labels, ontology), levels
            out = {s.label: {f.key: float(probs[s.label - 1, j]) for j, f in enumerate(ontology.findings)
                             if f.site == s.kind} for s in ontology.structures if s.kind != "sacrum"}
            return pred.labels, out, pred.finding_maps

        refine_torch = None
        if refiner_net is not None:
            def refine_torch(case: Case):
                return torch_outline_refiner(refiner_net, case.t2, case.t1, case.grid(), ontology)

        default_name = path.parent.name if path.stem in ("final", "last") else path.stem
        return Predictor(name or default_name, ckpt["run"]["model"]["kind"],
                         dict(ckpt.get("finding_thresholds", {})), run_torch, ontology,
                         combiners_from_card(ckpt), exclusive_from_card(ckpt, ontology), refine_torch)
    raise ConfigError(f"{path} is neither a checkpoint file nor a model directory with model.json")


def evaluate_predictor(predictor: Predictor, cases: list[Case], ontology: Ontology, postprocessed: bool = False
                       ) -> list[ModelResult]:
    """The model's scores on ``cases``; with ``postprocessed`` a second result scored after the service's
    post-processing, from the same predictions."""
    results = [ModelResult(predictor.name, predictor.kind)]
    if postprocessed:
        results.append(ModelResult(f"{predictor.name} +post", predictor.kind, postprocessed=True))
    for result in results:
        result.findings = {f.key: Counts() for f in ontology.findings}
    for case in cases:
        started = time.perf_counter()
        pred_labels, probs, maps = predictor.run(case)
        results[0].seconds_per_case.append(time.perf_counter() - started)
        _score_case(results[0], case, pred_labels, probs, predictor.thresholds, ontology)
        if postprocessed:
            started = time.perf_counter()
            refiner = predictor.outline_refiner(case) if predictor.outline_refiner is not None else None
            spine = delivered_levels(pred_labels, probs, maps, case, predictor.thresholds, ontology,
                                     predictor.combiners, predictor.exclusive, refiner)
            results[1].seconds_per_case.append(results[0].seconds_per_case[-1] + time.perf_counter() - started)
            present = None
            if probs is not None:  # decided as delivered: combiners' own thresholds, one per exclusive group
                present = {lv.label: {f.key: f.present for f in lv.findings} for lv in spine.levels}
            _score_case(results[1], case, spine.labels, None, predictor.thresholds, ontology, present)
    for result in results:
        if all(c.tp + c.fp + c.tn + c.fn == 0 for c in result.findings.values()):
            result.findings = {}
    return results


def delivered_levels(labels: np.ndarray, probs: dict[int, dict[str, float]] | None, maps: Any, case: Case,
                     thresholds: dict[str, float], ontology: Ontology, combiners: dict[str, Any] | None = None,
                     exclusive: tuple[tuple[str, ...], ...] = (), outline_refiner: Any = None):
    """The service's post-processing of one prediction (a SpineResult)."""
    from service.infer.postprocess import postprocess

    return postprocess(labels, probs or {}, ontology, thresholds, case.grid(), maps, combiners, exclusive,
                       outline_refiner)


def delivered_output(labels: np.ndarray, probs: dict[int, dict[str, float]] | None, maps: Any, case: Case,
                     thresholds: dict[str, float], ontology: Ontology, combiners: dict[str, Any] | None = None):
    """Label map and per-level finding probabilities as the worker delivers them (after post-processing)."""
    spine = delivered_levels(labels, probs, maps, case, thresholds, ontology, combiners)
    if probs is None:
        return spine.labels, None
    return spine.labels, {lv.label: {f.key: f.probability for f in lv.findings} for lv in spine.levels}


def _score_case(result: ModelResult, case: Case, pred_labels: np.ndarray,
                probs: dict[int, dict[str, float]] | None, thresholds: dict[str, float], ontology: Ontology,
                present: dict[int, dict[str, bool]] | None = None) -> None:
    """Overlap scores, and finding decisions: ``probs`` against ``thresholds``, or where the delivered output
    decided already, its ``present`` flags per level."""
    labels = [s.label for s in ontology.structures]
    kinds = kind_of_label(ontology)
    stated = [x for x in labels if x in case.labelled]
    scores, loss = overlap_and_loss(pred_labels, case.labels, stated)
    result.case_miou_loss.append(loss)
    result.case_names.append(case.name)
    result.case_miou.append(float(np.mean([iou for _, iou in scores.values()])) if scores else 0.0)
    result.remember_if_worst(CaseView.of(case, pred_labels, result.case_miou[-1]))
    result.case_dice.append(float(np.mean([d for d, _ in scores.values()])) if scores else 0.0)
    kind_scores = overlap_per_structure(kind_map(pred_labels, kinds), kind_map(case.labels, kinds),
                                        sorted({kinds[x] for x in labels if x in case.labelled}))
    result.case_kind_miou.append(float(np.mean([iou for _, iou in kind_scores.values()])) if kind_scores else 0.0)
    for label, pair in scores.items():
        result.per_structure.setdefault(label, []).append(pair)
    if present is not None:
        flags = {label: {k: float(v) for k, v in values.items()} for label, values in present.items()}
        for _, key, decided, actual in finding_decisions(case, pred_labels, flags):
            result.findings[key].add(decided > 0.5, actual)
        return
    if probs is None:
        return
    for _, key, p, actual in finding_decisions(case, pred_labels, probs):
        result.findings[key].add(p >= thresholds.get(key, 0.5), actual)


def finding_decisions(case: Case, pred_labels: np.ndarray, probs: dict[int, dict[str, float]]
                      ) -> list[tuple[int, str, float, bool]]:
    """(label, finding key, probability, truth) per level the truth states and contains; a level the prediction
    lacks has probability 0, so a missed structure counts as a missed finding."""
    present_truth = set(np.unique(case.labels).tolist())
    present_pred = set(np.unique(pred_labels).tolist())
    out = []
    for label, values in case.findings.items():
        if label not in present_truth:
            continue
        for key, actual in values.items():
            p = probs.get(label, {}).get(key, 0.0) if label in present_pred else 0.0
            out.append((label, key, float(p), bool(actual)))
    return out


def summarise(results: list[ModelResult], ontology: Ontology) -> dict[str, Any]:
    models = []
    for r in results:
        per_structure = {}
        for s in ontology.structures:
            pairs = r.per_structure.get(s.label, [])
            per_structure[s.name] = {"dice": float(np.mean([d for d, _ in pairs])) if pairs else None,
                                     "iou": float(np.mean([i for _, i in pairs])) if pairs else None,
                                     "cases": len(pairs)}
        findings = None
        if r.findings:
            total = Counts()
            for c in r.findings.values():
                total = total.merged(c)
            findings = {"per_finding": {k: c.rates() for k, c in r.findings.items()}, "overall": total.rates()}
        models.append({
            "name": r.name, "kind": r.kind, "cases": len(r.case_names),
            "miou": float(np.mean(r.case_miou)), "miou_sd": float(np.std(r.case_miou, ddof=1)) if len(r.case_miou) > 1 else 0.0,
            "kind_miou": float(np.mean(r.case_kind_miou)) if r.case_kind_miou else None,
            "dice": float(np.mean(r.case_dice)), "dice_sd": float(np.std(r.case_dice, ddof=1)) if len(r.case_dice) > 1 else 0.0,
            "miou_loss": {cause: float(np.mean([c[cause] for c in r.case_miou_loss])) for cause in LOSS_CAUSES}
            if r.case_miou_loss else None,
            "per_structure": per_structure, "findings": findings,
            "seconds_per_case": float(np.mean(r.seconds_per_case)) if r.seconds_per_case else None,
            "per_case": {"names": r.case_names, "miou": r.case_miou, "dice": r.case_dice,
                         "kind_miou": r.case_kind_miou},
        })
    return {"definitions": DEFINITIONS, "models": models, "comparisons": _comparisons(results)}


def _comparisons(results: list[ModelResult]) -> list[dict[str, Any]]:
    """The first model against each other one, raw against raw and post-processed against post-processed;
    and the first model raw against itself post-processed."""
    pairs = []
    for processed in (False, True):
        group = [r for r in results if r.postprocessed == processed]
        pairs += [(group[0], other) for other in group[1:]]
    post = [r for r in results if r.postprocessed]
    if post:
        pairs.append((results[0], post[0]))
    return [{"reference": a.name, "other": b.name, "miou": paired_comparison(a.case_miou, b.case_miou),
             "dice": paired_comparison(a.case_dice, b.case_dice)} for a, b in pairs]

