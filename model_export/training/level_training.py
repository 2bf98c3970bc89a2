"""Training the level classifier on crops around the true discs and vertebrae.

Crops are cut once, before the steps: the unaugmented crop of every level that the source states findings
for, plus ``variants`` copies rotated, scaled and shifted a little (a delivered structure's centre is
not the true one). Each step then draws levels and variants, mirrors the slice order at random (left and
right paracentral herniations look alike), scales intensities and drops a sequence now and then, so one
sequence alone still works. The finding embeddings are the segmenter's, fixed: the classifier learns to
map its crops into the space the text already defines.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model_export.data import Case
from model_export.evaluation.finding_pooling import auc
from model_export.model.level_classifier import LevelClassifier, LevelClassifierConfig
from service.errors import ConfigError
from service.infer.level_crops import CropSpec, crop_slices, structure_centres
from service.infer.model import normalised_channels
from service.ontology import Ontology

log = logging.getLogger(__name__)

MAX_ANGLE_DEG = 15.0
SCALE_RANGE = (0.9, 1.1)
CENTRE_SD_MM = 2.0
SEQUENCE_DROPOUT = 0.15
"""Chance per level of zeroing T1, and again of zeroing T2."""
MIN_EXCLUSIVE_POSITIVES = 20
"""Positive levels each finding needs before never sharing a level counts as a rule, not a chance."""
GROUP_LOSS_WEIGHT = 0.5
"""Weight of the softmax cross-entropy over each exclusive group, beside the per-finding BCE."""


@dataclass
class LevelSamples:
    crops: np.ndarray
    """(N, 1 + variants, slices, 2, pixels, pixels) float16; variant 0 is the unaugmented crop."""
    targets: np.ndarray
    """(N, F) float32 over the ontology's findings."""
    known: np.ndarray
    """(N, F) bool: the source states this finding at this level."""
    cases: list[str]

    def __len__(self) -> int:
        return len(self.targets)


def case_samples(case: Case, ontology: Ontology, spec: CropSpec, variants: int, rng: np.random.Generator
                 ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Crops, targets and known masks of one case's levels that have stated findings."""
    keys = [f.key for f in ontology.findings]
    channels = normalised_channels(case.t2, case.t1)
    grid = case.grid()
    centres = structure_centres(case.labels, sorted(case.findings))
    crops, targets, known = [], [], []
    for label, centre in sorted(centres.items()):
        stated = case.findings[label]
        if not stated:
            continue
        copies = [crop_slices(channels, grid, centre, spec)]
        for _ in range(variants):
            copies.append(crop_slices(
                channels, grid, centre, spec, angle_deg=float(rng.uniform(-MAX_ANGLE_DEG, MAX_ANGLE_DEG)),
                scale=float(rng.uniform(*SCALE_RANGE)), shift_mm=tuple(rng.normal(0.0, CENTRE_SD_MM, 2)),
                slice_shift=int(rng.integers(-1, 2))))
        crops.append(np.stack(copies).astype(np.float16))
        targets.append(np.array([float(stated.get(k, False)) for k in keys], np.float32))
        known.append(np.array([k in stated for k in keys]))
    return crops, targets, known


def level_samples(loaders: list[tuple[str, Callable[[], Case]]], ontology: Ontology, spec: CropSpec,
                  variants: int, seed: int, progress: bool = True, what: str = "crops") -> LevelSamples:
    rng = np.random.default_rng(seed)
    crops: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    known: list[np.ndarray] = []
    names: list[str] = []
    for name, load in tqdm(loaders, desc=what, unit="case", disable=not progress):
        c, t, k = case_samples(load(), ontology, spec, variants, rng)
        crops += c
        targets += t
        known += k
        names += [name] * len(c)
    f = len(ontology.findings)
    shape = (0, 1 + variants, spec.slices, 2, spec.pixels, spec.pixels)
    return LevelSamples(np.stack(crops) if crops else np.zeros(shape, np.float16),
                        np.stack(targets) if targets else np.zeros((0, f), np.float32),
                        np.stack(known) if known else np.zeros((0, f), bool), names)


def exclusive_groups(samples: LevelSamples, keys: list[str], min_positives: int = MIN_EXCLUSIVE_POSITIVES
                     ) -> list[list[str]]:
    """Findings that never share a level in the training labels, as groups (key order, greedy).

    In the generated studies a disc is bulging, protruding or extruded, never two of them at once: the
    usual report names one contour per disc. A hospital's labels may differ, so the rule is read off the
    training data rather than assumed: two findings are exclusive when both are stated at the same
    levels often enough, each is positive at ``min_positives`` levels or more, and no level has both.
    """
    positive = samples.targets.astype(bool) & samples.known
    both_known = samples.known.T.astype(int) @ samples.known.astype(int)
    together = positive.T.astype(int) @ positive.astype(int)
    enough = positive.sum(axis=0) >= min_positives
    n = len(keys)

    def exclusive(i: int, j: int) -> bool:
        return bool(enough[i] and enough[j] and both_known[i, j] >= min_positives and together[i, j] == 0)

    groups: list[list[int]] = []
    for i in range(n):
        home = next((g for g in groups if all(exclusive(i, j) for j in g)), None)
        if home is not None:
            home.append(i)
        elif any(exclusive(i, j) for j in range(n)):
            groups.append([i])
    return [[keys[i] for i in g] for g in groups if len(g) > 1]


def group_loss(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, groups: list[list[int]]
               ) -> torch.Tensor:
    """Softmax cross-entropy over [none, members] of each exclusive group, on levels that state all members.

    The per-finding BCE never compares a protrusion's logit with the extrusion's at the same level; this
    does, with "none" at logit 0, the sigmoid's own reference point.
    """
    total, count = logits.new_zeros(()), 0
    for members in groups:
        stated = known[:, members].all(dim=1)
        if not stated.any():
            continue
        member_logits = logits[stated][:, members]
        scores = torch.cat([member_logits.new_zeros(len(member_logits), 1), member_logits], dim=1)
        member_targets = targets[stated][:, members]
        which = torch.where(member_targets.any(dim=1), member_targets.argmax(dim=1) + 1, 0)
        total = total + F.cross_entropy(scores, which, reduction="sum")
        count += len(scores)
    return total / max(count, 1)


def augment_batch(crops: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """(B, slices, 2, H, W) float16 -> float32 with the per-step augmentations."""
    x = torch.from_numpy(crops.astype(np.float32))
    b = len(x)
    flip = torch.from_numpy(rng.random(b) < 0.5)
    x[flip] = x[flip].flip(1)
    x = x * torch.from_numpy(rng.uniform(0.8, 1.2, (b, 1, 2, 1, 1)).astype(np.float32))
    drop = rng.random(b)
    x[torch.from_numpy(drop < SEQUENCE_DROPOUT), :, 1] = 0.0
    x[torch.from_numpy((drop >= SEQUENCE_DROPOUT) & (drop < 2 * SEQUENCE_DROPOUT)), :, 0] = 0.0
    return x


def positive_weights(samples: LevelSamples, cap: float = 10.0) -> torch.Tensor:
    """sqrt(negatives / positives) per finding, capped: rare findings still pull, without swamping."""
    pos = (samples.targets * samples.known).sum(axis=0)
    neg = ((1 - samples.targets) * samples.known).sum(axis=0)
    return torch.from_numpy(np.sqrt(np.minimum(neg / np.maximum(pos, 1.0), cap)).astype(np.float32))


def level_logits(model: LevelClassifier, crops: np.ndarray, finding_embeddings: torch.Tensor,
                 batch: int = 32) -> np.ndarray:
    """(N, F) logits of the unaugmented crops (N, slices, 2, H, W)."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(crops), batch):
            out.append(model(torch.from_numpy(crops[i:i + batch].astype(np.float32)), finding_embeddings))
    model.train()
    return torch.cat(out).numpy() if out else np.zeros((0, len(finding_embeddings)), np.float32)


def validation_auc(model: LevelClassifier, samples: LevelSamples, finding_embeddings: torch.Tensor,
                   keys: list[str]) -> dict[str, float | None]:
    logits = level_logits(model, samples.crops[:, 0], finding_embeddings)
    return {key: auc([(float(logits[i, j]), bool(samples.targets[i, j]))
                      for i in np.flatnonzero(samples.known[:, j])]) for j, key in enumerate(keys)}


def train_level_classifier(train: LevelSamples, val: LevelSamples | None, finding_embeddings: torch.Tensor,
                           cfg: LevelClassifierConfig, keys: list[str], steps: int, batch: int = 32,
                           lr: float = 2e-3, seed: int = 0, validate_every: int = 500, progress: bool = True,
                           groups: list[list[str]] | None = None, group_weight: float = GROUP_LOSS_WEIGHT
                           ) -> tuple[LevelClassifier, list[dict[str, Any]]]:
    """One-cycle AdamW on the weighted, partial-label BCE, plus ``group_weight`` times the group loss over
    ``groups`` of exclusive findings; history rows for the curves."""
    if len(train) == 0:
        raise ValueError("no training level states a finding")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LevelClassifier(cfg)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    targets, known = torch.from_numpy(train.targets), torch.from_numpy(train.known).float()
    weights = positive_weights(train)
    group_index = [[keys.index(k) for k in g] for g in groups or []]
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = tqdm(range(steps), desc="level classifier", unit="step", disable=not progress)
    for step in bar:
        idx = rng.integers(0, len(train), batch)
        variant = rng.integers(0, train.crops.shape[1], batch)
        logits = model(augment_batch(train.crops[idx, variant], rng), finding_embeddings)
        per_finding = F.binary_cross_entropy_with_logits(logits, targets[idx], pos_weight=weights, reduction="none")
        loss = (per_finding * known[idx]).sum() / known[idx].sum().clamp(min=1.0)
        if group_index and group_weight > 0:
            loss = loss + group_weight * group_loss(logits, targets[idx], known[idx].bool(), group_index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        row: dict[str, Any] = {"step": step + 1, "loss": loss.item(), "seconds": time.perf_counter() - started}
        if val is not None and len(val) and ((step + 1) % validate_every == 0 or step + 1 == steps):
            row["val_auc"] = validation_auc(model, val, finding_embeddings, keys)
            log.info("level classifier step %d: validation AUC %s", step + 1,
                     {k: None if v is None else round(v, 3) for k, v in row["val_auc"].items()})
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
    model.eval()
    return model, history


def plot_level_curves(history: list[dict[str, Any]], path: Any, title: str = "") -> None:
    """Training loss and validation AUC per finding, as a PNG."""
    from model_export.training.curves import plot_loss_and_scores

    rows = [h for h in history if "val_auc" in h]
    scores = {key: [(h["step"], h["val_auc"][key]) for h in rows if h["val_auc"][key] is not None]
              for key in (rows[0]["val_auc"] if rows else [])}
    plot_loss_and_scores(history, path, title, "weighted BCE + group loss", scores,
                         "validation AUC (true level centres)", ylim=(0.4, 1.0))


def add_level_classifier(checkpoint: Path, train_cases: list[tuple[str, Callable[[], Case]]],
                         val_cases: list[tuple[str, Callable[[], Case]]] | None, out: Path, steps: int,
                         batch: int = 32, variants: int = 2, seed: int = 0, progress: bool = True,
                         sources: dict[str, Any] | None = None, exclusive: bool = True) -> dict[str, Any]:
    """Train a level classifier for ``checkpoint`` and write the copy holding both to ``out``.

    Next to ``out``: ``<stem>_curves.png`` and ``<stem>_history.json``. Thresholds are the best-F1 ones on
    the validation crops (0.5 without them) and combiners are dropped: both were set for the scores the
    classifier replaces. With ``exclusive``, findings that never share a training level are trained with
    the group loss and recorded as candidates (``provenance.exclusive_groups``); ``tune-thresholds`` then
    declares for the service those where reporting one per level helps. Returns what the CLI prints.
    """
    from model_export.model.level_classifier import CHECKPOINT_KEY
    from model_export.model.network import LumbarSegmenter, load_checkpoint
    from model_export.training.loop import tune_thresholds

    segmenter, ckpt = load_checkpoint(checkpoint)
    if not isinstance(segmenter, LumbarSegmenter):
        raise ConfigError(f"{checkpoint} is a {ckpt['run']['model']['kind']} model without finding "
                          "embeddings; the level classifier needs a text-guided or visual-only checkpoint")
    ontology = Ontology.from_dict(ckpt["ontology"])
    keys = [f.key for f in ontology.findings]
    with torch.no_grad():
        finding_embeddings = segmenter.class_embeddings()[1].detach()
    cfg = LevelClassifierConfig(embed_dim=int(finding_embeddings.shape[1]))
    started = time.perf_counter()
    train = level_samples(train_cases, ontology, cfg.crop, variants, seed, progress, "training crops")
    if len(train) == 0:
        raise ConfigError("no training level states a finding: nothing to train the level classifier on")
    groups = exclusive_groups(train, keys) if exclusive else []
    val = None
    if val_cases:
        val = level_samples(val_cases, ontology, cfg.crop, 0, seed + 1, progress, "validation crops")
    crops_s = time.perf_counter() - started
    classifier, history = train_level_classifier(train, val, finding_embeddings, cfg, keys, steps, batch,
                                                 seed=seed, progress=progress, groups=groups)
    thresholds = {k: 0.5 for k in keys}
    if val is not None and len(val):
        probs = 1.0 / (1.0 + np.exp(-level_logits(classifier, val.crops[:, 0], finding_embeddings)))
        thresholds |= tune_thresholds({key: [(float(probs[i, j]), bool(val.targets[i, j]))
                                             for i in np.flatnonzero(val.known[:, j])]
                                       for j, key in enumerate(keys) if val.known[:, j].any()})
    final_auc = next((h["val_auc"] for h in reversed(history) if "val_auc" in h), None)
    ckpt[CHECKPOINT_KEY] = {
        "config": cfg.to_dict(),
        "state": classifier.state_dict(),
        "provenance": {**(sources or {}), "cases": len(train_cases), "levels": len(train), "variants": variants,
                       "steps": steps, "batch": batch, "seed": seed,
                       "exclusive_groups": groups, "group_loss_weight": GROUP_LOSS_WEIGHT if groups else 0.0,
                       "val_cases": len(val_cases or []), "val_levels": 0 if val is None else len(val),
                       "val_auc_true_centres": final_auc, "crop_seconds": round(crops_s, 1),
                       "train_seconds": round(history[-1]["seconds"], 1)},
    }
    ckpt["finding_thresholds"] = thresholds
    ckpt["finding_combiners"] = {}
    ckpt["exclusive_findings"] = []  # tune-thresholds keeps the groups where the rule helps
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, str(out))
    curves = out.with_name(out.stem + "_curves.png")
    plot_level_curves(history, curves, f"level classifier on {len(train)} levels (synthetic data)")
    out.with_name(out.stem + "_history.json").write_text(json.dumps(history))
    return {"out": str(out), "curves": str(curves), "levels": len(train), "val_levels": 0 if val is None else len(val),
            "val_auc_true_centres": final_auc, "thresholds": thresholds, "exclusive_groups": groups}
