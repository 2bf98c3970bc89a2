"""The training loop: seeded, resumable, budgeted, with checkpoints and PNG curves.

One step takes a window of consecutive slices from one study, so the finding loss can pool a level's
evidence across slices as serving does. The last ``validation_cases`` cases are held out of the
gradient: they give the validation Dice in the curves and tune the finding thresholds in the model card.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model_export.configs import RunConfig
from model_export.data import Case, discover_cases
from model_export.evaluation.metrics import Counts, best_f1_threshold, overlap_per_structure
from model_export.model.losses import PartialDiceCELoss, finding_loss
from model_export.model.network import (
    CHECKPOINT_FORMAT,
    LumbarSegmenter,
    build_model,
    load_checkpoint,
    text_state_of,
)
from model_export.model.predict import predict_volume
from model_export.training.augment import StepAugment
from model_export.training.curves import plot_curves
from model_export.training.prepare import PreparedCase, prepare_case, rank_chain
from service.errors import ConfigError
from service.ontology import DEFAULT_ONTOLOGY, Ontology

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_cases(cases: list, validation: int) -> tuple[list, list]:
    validation = min(validation, max(0, len(cases) - 1))
    return cases[: len(cases) - validation], cases[len(cases) - validation:]


def budget_seconds(state: dict[str, Any], run: RunConfig) -> float:
    """Training time as it would be on ``threads`` dedicated cores: process CPU time / threads.

    Wall time would charge a run for other processes on a shared machine; CPU time does not, so models
    compared under "the same budget" get the same compute whatever else was running.
    """
    return state.get("cpu_s", 0.0) / max(1, run.train.threads)


def lr_at(step: int, run: RunConfig, budget_used_s: float = 0.0) -> float:
    """Linear warm-up, then a cosine that reaches zero when the steps or the time budget run out.

    With a time budget, progress is the larger of the step fraction and the budget fraction, so a run
    cut short by its budget still ends annealed instead of stopping at a high learning rate.
    """
    t = run.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    if t.time_budget_s:
        progress = max(progress, budget_used_s / t.time_budget_s)
    return t.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def sample_window(case: PreparedCase, size: int, rng: np.random.Generator) -> slice:
    """Consecutive slices around the middle of the study, jittered: the spine lives mid-sagittal."""
    n = case.image.shape[0]
    if n <= size:
        return slice(0, n)
    centre = n // 2 + int(rng.integers(-(n - size) // 2, (n - size) // 2 + 1))
    start = int(np.clip(centre - size // 2, 0, n - size))
    return slice(start, start + size)


def training_step(model: torch.nn.Module, batch: PreparedCase, window: slice, augment: StepAugment,
                  seg_loss: PartialDiceCELoss, run: RunConfig, band: bool = False) -> dict[str, torch.Tensor]:
    """One optimiser step's losses on ``window`` of ``batch``, seen through the band view if ``band``."""
    if band and batch.band_image is not None and batch.band_target is not None:
        image, target = batch.band_image[window], batch.band_target[window]
    else:
        image, target = batch.image[window], batch.target[window]
    image, target = augment(image, target, batch.has_t2, batch.has_t1)
    out = model(image)
    losses = {"segmentation": seg_loss(out["logits"], target, batch.labelled, batch.rank_count)}
    if "finding_pixel_logits" in out:
        low = out["finding_pixel_logits"]
        stated = torch.where(target <= model.num_structures, target, 0)  # unknown and ranked voxels state nothing
        target_low = F.interpolate(stated[:, None].float(), size=low.shape[-2:], mode="nearest")[:, 0]
        losses["findings"] = finding_loss(low, target_low, model.num_structures, batch.finding_targets,
                                          batch.finding_known, run.model.finding_pool_dilation)
    losses["total"] = losses["segmentation"] + run.train.finding_loss_weight * losses.get("findings", 0.0)
    return losses


def validate(model: torch.nn.Module, cases: list[Case], run: RunConfig, ontology: Ontology) -> dict[str, Any]:
    """Mean Dice over validation cases, and per-finding (probability, truth) pairs for thresholds."""
    labels = [s.label for s in ontology.structures]
    dices: list[float] = []
    pairs: dict[str, list[tuple[float, bool]]] = {f.key: [] for f in ontology.findings}
    for case in cases:
        pred = predict_volume(model, case.t2, case.t1, run.model.view())
        scores = overlap_per_structure(pred.labels, case.labels, [x for x in labels if x in case.labelled])
        dices.append(float(np.mean([d for d, _ in scores.values()])) if scores else 0.0)
        probs = pred.finding_probs()
        if probs is None:
            continue
        for label, values in case.findings.items():
            for key, actual in values.items():
                j = [f.key for f in ontology.findings].index(key)
                pairs[key].append((float(probs[label - 1, j]), bool(actual)))
    return {"dice": float(np.mean(dices)) if dices else None, "finding_pairs": pairs}


def tune_thresholds(pairs: dict[str, list[tuple[float, bool]]]) -> dict[str, float]:
    out = {}
    for key, values in pairs.items():
        probs = np.array([p for p, _ in values], dtype=float)
        actual = np.array([a for _, a in values], dtype=bool)
        out[key] = best_f1_threshold(probs, actual)
    return out


def threshold_report(pairs: dict[str, list[tuple[float, bool]]], thresholds: dict[str, float]
                     ) -> dict[str, dict[str, Any]]:
    """Per finding: the threshold and the counts and rates it gives on the pairs it was tuned on."""
    out = {}
    for key, values in pairs.items():
        counts = Counts()
        for p, actual in values:
            counts.add(p >= thresholds[key], actual)
        out[key] = {"threshold": round(thresholds[key], 4), **counts.rates()}
    return out


def train(data_dir: Path, run: RunConfig, out_dir: Path, resume: bool = False,
          ontology: Ontology = DEFAULT_ONTOLOGY, max_cases: int | None = None, progress: bool = True,
          model_init: Callable[[torch.nn.Module], dict[str, Any]] | None = None,
          real_dir: Path | None = None, real_split: Path | None = None) -> Path:
    """Train ``run`` on the cases under ``data_dir``; returns the path of the final checkpoint.

    ``model_init`` (e.g. ``model_export.pretrain.init.pretrained_initialiser``) loads pretrained weights into
    the fresh model before training; what it returns is kept in the checkpoint's provenance.
    ``real_dir``: real labelled case folders (model_export.real_cases) mixed in at ``run.train.real_share``
    of the steps; the cases of the validation split (``real_split``, default the committed one) are left out.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(run.train.threads)
    seed_everything(run.train.seed)
    found = discover_cases(data_dir, ontology)[:max_cases]
    train_found, val_found = split_cases(found, run.train.validation_cases)
    if not train_found:
        raise ConfigError(f"no training cases in {data_dir}")
    # one case at a time: only the model-size arrays stay in memory, not every study at full resolution
    prepared = [prepare_case(load(), run.model.view(), ontology) for _, load in train_found]
    val_cases = [load() for _, load in val_found]
    real_found, real_validation = real_training_cases(real_dir, real_split, ontology) if real_dir else ([], [])
    if real_found and not 0.0 < run.train.real_share < 1.0:
        raise ConfigError(f"real cases given but real_share is {run.train.real_share}: give a share in (0, 1)")
    real_prepared = [prepare_case(load(), run.model.view(), ontology) for _, load in real_found]
    model = build_model(run, ontology, work_dir=out_dir)
    initialised_from = model_init(model) if model_init is not None else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=run.train.lr, weight_decay=run.train.weight_decay)
    state: dict[str, Any] = {"step": 0, "history": [], "elapsed_s": 0.0}
    last = out_dir / "last.pt"
    if resume and last.is_file():
        _, ckpt = load_checkpoint(last)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        torch.set_rng_state(ckpt["torch_rng"])
        log.info("resumed from %s at step %d", last, state["step"])
    rng = np.random.default_rng(run.train.seed + state["step"])
    augment = StepAugment(run.train.seed + state["step"], run.train.sequence_dropout, run.train.augment)
    seg_loss = PartialDiceCELoss(rank_chain(ontology))
    started = time.perf_counter() - state["elapsed_s"]
    cpu_started = time.process_time() - state.get("cpu_s", 0.0)
    bar = tqdm(total=run.train.steps, initial=state["step"], disable=not progress, desc=f"train {run.name}")
    model.train()
    while state["step"] < run.train.steps:
        step = state["step"]
        lr = lr_at(step, run, budget_seconds(state, run))
        for group in optimizer.param_groups:
            group["lr"] = lr
        pool = real_prepared if real_prepared and rng.random() < run.train.real_share else prepared
        batch = pool[int(rng.integers(len(pool)))]
        window = sample_window(batch, run.train.slices_per_step, rng)
        band = run.model.band_size is not None and rng.random() >= run.train.survey_fraction
        losses = training_step(model, batch, window, augment, seg_loss, run, band)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        state["step"] = step + 1
        state["elapsed_s"] = time.perf_counter() - started
        state["cpu_s"] = time.process_time() - cpu_started
        record = {"step": step + 1, "lr": lr, "elapsed_s": round(state["elapsed_s"], 2),
                  "cpu_s": round(state["cpu_s"], 2),
                  **{k: float(v.detach()) for k, v in losses.items()}}
        state["history"].append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['total']:.3f}")
        out_of_time = (run.train.time_budget_s is not None
                       and budget_seconds(state, run) >= run.train.time_budget_s)
        if state["step"] % run.train.checkpoint_every == 0 or out_of_time or state["step"] == run.train.steps:
            if val_cases:
                state["history"][-1]["val_dice"] = validate(model, val_cases, run, ontology)["dice"]
                model.train()
            _save(last, model, optimizer, state, run, ontology)
            plot_curves(state["history"], out_dir / "curves.png", title=f"{run.name} ({run.model.kind})")
        if out_of_time:
            log.info("time budget of %.0f s reached at step %d", run.train.time_budget_s, state["step"])
            break
    bar.close()
    final = validate(model, val_cases, run, ontology) if val_cases else {"dice": None, "finding_pairs": {}}
    thresholds = tune_thresholds(final["finding_pairs"]) if isinstance(model, LumbarSegmenter) else {}
    provenance = {"data_dir": str(data_dir), "training_cases": [name for name, _ in train_found],
                  "real_data_dir": None if real_dir is None else str(real_dir),
                  "real_training_cases": [name for name, _ in real_found], "real_validation_cases": real_validation,
                  "real_share": run.train.real_share,
                  "validation_cases": [c.name for c in val_cases], "steps": state["step"],
                  "wall_time_s": round(state["elapsed_s"], 1), "cpu_time_s": round(state.get("cpu_s", 0.0), 1),
                  "budget_s_on_dedicated_cores": round(budget_seconds(state, run), 1), "threads": run.train.threads,
                  "validation_dice": final["dice"], "initialised_from": initialised_from}
    path = out_dir / "final.pt"
    _save(path, model, optimizer, state, run, ontology, thresholds=thresholds, provenance=provenance)
    (out_dir / "history.json").write_text(json.dumps(state["history"]))
    return path


def real_training_cases(real_dir: Path, split: Path | None, ontology: Ontology) -> tuple[list, list[str]]:
    """(name, loader) of the real cases to train on, all under ``real_dir`` but the validation split's; and
    the names of the split's cases found there, which the checkpoint records as never trained on."""
    from model_export.real_cases import SPLIT_FILE, discover_real_cases, split_real_cases

    found = discover_real_cases(real_dir, ontology)
    training = split_real_cases(found, split or SPLIT_FILE, "training")
    if not training:
        raise ConfigError(f"no real training cases under {real_dir} outside the validation split")
    return training, [name for name, _ in split_real_cases(found, split or SPLIT_FILE, "validation")]


def _save(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
          run: RunConfig, ontology: Ontology, thresholds: dict[str, float] | None = None,
          provenance: dict[str, Any] | None = None) -> None:
    ckpt = {"format": CHECKPOINT_FORMAT, "run": run.to_dict(), "ontology": ontology.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "state": state, "torch_rng": torch.get_rng_state(),
            "text_state": text_state_of(model), "finding_thresholds": thresholds or {},
            "provenance": provenance or {}}
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, str(tmp))
    tmp.replace(path)
