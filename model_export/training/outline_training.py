"""Training the outline refiner on true outlines behind hints spoilt as a coarse segmenter spoils them.

Each sample is one disc or vertebra on one slice, cut as the worker cuts it (``service.infer.outline_crops``):
from one slice before the structure to one after, the hint taken from the slice itself or, at the ends, its
neighbour. The hint is the true label map on the crop, spoilt (:func:`spoil_hint`): taken down to a coarse
grid with smooth noise on the class maps and back (soft, wobbly outlines, as an upsampled class map
has), shifted, one structure grown or shrunk, and now and then a part of it cut away. The crop's centre
moves and turns a little, as a delivered structure's box differs from the true one. The target is the
true structure on the crop. The loss is the BCE plus a soft Dice.

Validation spoils the hints of held-out cases the same way with a fixed seed and reports the IoU of the
hint and of the refined outline against the truth; whether it helps a given segmenter is for
``evaluate --postprocess`` to say.
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
from scipy import ndimage
from tqdm import tqdm

from model_export.data import Case
from model_export.model.outline_refiner import CHECKPOINT_KEY, OutlineRefinerConfig, OutlineRefinerNet
from service.errors import ConfigError
from service.infer.model import normalised_channels
from service.infer.outline_crops import (
    CropFrame,
    OutlineSpec,
    context_slices,
    refined_labels,
    structure_boxes_centres,
)
from service.ontology import DEFAULT_ONTOLOGY, Ontology

log = logging.getLogger(__name__)

COARSE_FACTORS = (2, 3, 4, 5)
"""Crop pixels per coarse cell when the hint is taken down and back (about 2-5 mm)."""
NOISE_RANGE = (0.0, 0.25)
"""SD of the noise on the coarse class maps (before a 3 x 3 smoothing), drawn per sample."""
MAX_SHIFT_PX = 3
CENTRE_SD_MM = 3.0
MAX_ANGLE_DEG = 8.0
SEQUENCE_DROPOUT = 0.15
DICE_WEIGHT = 0.5


@dataclass
class OutlineCase:
    """What sampling needs of one case: normalised channels, labels and its grid, kept in memory."""

    name: str
    channels: np.ndarray
    """(2, n, rows, cols) float16."""
    labels: np.ndarray
    grid: Any
    structures: dict[int, tuple[list[int], np.ndarray]]
    """Refined label -> (its slices, the (row, col) centre of its box)."""

    @classmethod
    def of(cls, case: Case, ontology: Ontology) -> OutlineCase:
        labels = np.asarray(case.labels, dtype=np.uint8)
        wanted = [x for x in refined_labels(ontology) if x in case.labelled]
        return cls(case.name, normalised_channels(case.t2, case.t1).astype(np.float16), labels, case.grid(),
                   structure_boxes_centres(labels, wanted))


def spoil_hint(labels: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """A (P, P) label crop as a coarse segmenter might have drawn it (see the module docstring)."""
    values = np.unique(labels)
    onehot = torch.from_numpy((labels[None] == values[:, None, None]).astype(np.float32))[None]
    factor = int(rng.choice(COARSE_FACTORS))
    coarse = F.avg_pool2d(onehot, factor, ceil_mode=True)
    amplitude = float(rng.uniform(*NOISE_RANGE))
    if amplitude > 0:
        noise = torch.from_numpy(rng.normal(0.0, amplitude, coarse.shape).astype(np.float32))
        coarse = coarse + F.avg_pool2d(noise, 3, 1, 1, count_include_pad=False) * 2.0
    back = F.interpolate(coarse, size=labels.shape, mode="bilinear", align_corners=False)
    hint = values[back[0].argmax(0).numpy()]
    dy, dx = rng.integers(-MAX_SHIFT_PX, MAX_SHIFT_PX + 1, 2)
    hint = np.roll(hint, (int(dy), int(dx)), axis=(0, 1))
    mine = hint == target
    if rng.random() < 0.3 and mine.any():
        steps = int(rng.integers(1, 4))
        grown = ndimage.binary_dilation(mine, iterations=steps) if rng.random() < 0.5 else \
            ndimage.binary_erosion(mine, iterations=steps)
        hint = np.where(mine & ~grown, 0, hint)
        hint = np.where(grown & (hint == 0), target, hint)
        mine = hint == target
    if rng.random() < 0.1 and mine.sum() > 20:  # a part cut away along a random line through the structure
        rows, cols = np.nonzero(mine)
        angle = rng.uniform(0, 2 * np.pi)
        t = (rows - rows.mean()) * np.cos(angle) + (cols - cols.mean()) * np.sin(angle)
        cut = t > rng.uniform(0.0, t.max())
        hint[rows[cut], cols[cut]] = 0
    return hint


def draw_sample(case: OutlineCase, spec: OutlineSpec, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """One (``spec.input_channels``, P, P) input and (P, P) target from a random refined structure of ``case``."""
    if not case.structures:
        return None
    label = int(rng.choice(sorted(case.structures)))
    slices, centre = case.structures[label]
    n = case.labels.shape[0]
    k = int(rng.integers(max(slices[0] - 1, 0), min(slices[-1] + 2, n)))
    if k in slices and rng.random() < 0.75:
        hint_slice = k
    else:
        near = [s for s in slices if s != k and abs(s - k) == 1] or [min(slices, key=lambda s: abs(s - k))]
        hint_slice = int(rng.choice(near))
    centre = centre + rng.normal(0.0, CENTRE_SD_MM, 2) / np.asarray(case.grid.pixel_spacing, dtype=np.float64)
    frame = CropFrame.around(case.grid, centre, spec, angle_deg=float(rng.uniform(-MAX_ANGLE_DEG, MAX_ANGLE_DEG)),
                             scale=float(rng.uniform(0.9, 1.1)))
    hint = spoil_hint(frame.sample(case.labels[hint_slice], order=0).astype(np.int64), label, rng)
    target = frame.sample((case.labels[k] == label).astype(np.float32), order=0)
    read = context_slices(k, n, spec.context_slices)
    if spec.context_slices and rng.random() < 0.5:  # the slice order runs left or right, by the scanner's choice
        read.reverse()
    image = [frame.sample_slices(case.channels[c, read].astype(np.float32)) * float(rng.uniform(0.8, 1.2))
             for c in (0, 1)]
    drop = rng.random()
    if drop < SEQUENCE_DROPOUT:
        image[1][:] = 0.0
    elif drop < 2 * SEQUENCE_DROPOUT:
        image[0][:] = 0.0
    x = np.concatenate([*image, (hint == label).astype(np.float32)[None],
                        ((hint != label) & (hint != 0)).astype(np.float32)[None]])
    return x, target


def draw_batch(cases: list[OutlineCase], spec: OutlineSpec, batch: int, rng: np.random.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    while len(xs) < batch:
        sample = draw_sample(cases[int(rng.integers(len(cases)))], spec, rng)
        if sample is not None:
            xs.append(sample[0])
            ys.append(sample[1])
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def refiner_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2))
    dice = 1.0 - (2 * inter + 1.0) / (prob.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1.0)
    return bce + DICE_WEIGHT * dice.mean()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def validation_iou(net: OutlineRefinerNet, val: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """Mean IoU against the truth of the spoilt hints and of the refined outlines, over samples whose
    target or hint is not empty."""
    x, y = val
    net.eval()
    with torch.no_grad():
        refined = torch.cat([net(x[i:i + 32]) for i in range(0, len(x), 32)]) > 0
    net.train()
    hint, truth = x[:, -2].numpy() > 0.5, y.numpy() > 0.5  # the hint is the last channel but one
    keep = [i for i in range(len(x)) if hint[i].any() or truth[i].any()]
    return {"hint_iou": float(np.mean([iou(hint[i], truth[i]) for i in keep])),
            "refined_iou": float(np.mean([iou(refined[i].numpy(), truth[i]) for i in keep]))}


def train_outline_refiner(train: list[OutlineCase], val: list[OutlineCase], cfg: OutlineRefinerConfig, steps: int,
                          batch: int = 24, lr: float = 3e-3, seed: int = 0, val_samples: int = 384,
                          validate_every: int = 250, progress: bool = True,
                          init_state: dict[str, Any] | None = None
                          ) -> tuple[OutlineRefinerNet, list[dict[str, Any]]]:
    """One-cycle AdamW on BCE + soft Dice, from ``init_state`` when given; history rows for the curves."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    val_set = draw_batch(val, cfg.crop, val_samples, np.random.default_rng(1)) if val else None
    net = OutlineRefinerNet(cfg)
    if init_state is not None:
        net.load_state_dict(init_state)
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = tqdm(range(steps), desc="outline refiner", unit="step", disable=not progress)
    for step in bar:
        x, y = draw_batch(train, cfg.crop, batch, rng)
        loss = refiner_loss(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        row: dict[str, Any] = {"step": step + 1, "loss": loss.item(), "seconds": time.perf_counter() - started}
        if val_set is not None and ((step + 1) % validate_every == 0 or step + 1 == steps):
            row |= validation_iou(net, val_set)
            log.info("outline refiner step %d: validation IoU hint %.3f, refined %.3f",
                     step + 1, row["hint_iou"], row["refined_iou"])
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
    net.eval()
    return net, history


def plot_outline_curves(history: list[dict[str, Any]], path: Any, title: str = "") -> None:
    """Training loss and validation IoU (spoilt hint against refined), as a PNG."""
    from model_export.training.curves import plot_loss_and_scores

    rows = [h for h in history if "refined_iou" in h]
    scores = {"spoilt hint": [(h["step"], h["hint_iou"]) for h in rows],
              "refined": [(h["step"], h["refined_iou"]) for h in rows]}
    plot_loss_and_scores(history, path, title, f"BCE + {DICE_WEIGHT} soft Dice", scores,
                         "validation IoU against the true outline", dashed=("spoilt hint",))


def load_outline_cases(loaders: list[tuple[str, Callable[[], Case]]], ontology: Ontology, progress: bool,
                       what: str) -> list[OutlineCase]:
    cases = [OutlineCase.of(load(), ontology) for _, load in tqdm(loaders, desc=what, unit="case",
                                                                   disable=not progress)]
    return [c for c in cases if c.structures]


def train_refiner_file(train_cases: list[tuple[str, Callable[[], Case]]],
                       val_cases: list[tuple[str, Callable[[], Case]]] | None, out: Path, steps: int,
                       batch: int = 24, seed: int = 0, progress: bool = True, sources: dict[str, Any] | None = None,
                       ontology: Ontology = DEFAULT_ONTOLOGY, widths: list[int] | None = None,
                       context_slices: int = 0, lr: float = 3e-3, init: Path | None = None) -> dict[str, Any]:
    """Train a refiner and write it alone to ``out`` ({CHECKPOINT_KEY: entry}), with curves and history.

    ``init`` continues a refiner trained before (its widths and crop, a further cycle of ``steps``): the
    validation IoU was still rising when the default cycle ended (model_export/RESULTS.md, session 14)."""
    init_entry = None if init is None else read_refiner_entry(init)
    if init_entry is not None:
        cfg = OutlineRefinerConfig.from_dict(init_entry["config"])
    else:
        crop = OutlineSpec(context_slices=context_slices)
        cfg = OutlineRefinerConfig(crop=crop) if widths is None else OutlineRefinerConfig(tuple(widths), crop)
    started = time.perf_counter()
    train = load_outline_cases(train_cases, ontology, progress, "training cases")
    if not train:
        raise ConfigError("no training case labels a disc or vertebra: nothing to train the outline refiner on")
    val = load_outline_cases(val_cases or [], ontology, progress, "validation cases")
    load_s = time.perf_counter() - started
    net, history = train_outline_refiner(train, val, cfg, steps, batch, lr, seed=seed, progress=progress,
                                         init_state=None if init_entry is None else init_entry["state"])
    final = next((h for h in reversed(history) if "refined_iou" in h), None)
    entry = {
        "config": cfg.to_dict(),
        "state": net.state_dict(),
        "provenance": {**(sources or {}), "cases": len(train), "val_cases": len(val), "steps": steps,
                       "batch": batch, "seed": seed, "lr": lr, "load_seconds": round(load_s, 1),
                       "continued_from": None if init_entry is None else {
                           "file": str(init), "steps": init_entry["provenance"].get("steps"),
                           "train_seconds": init_entry["provenance"].get("train_seconds")},
                       "train_seconds": round(history[-1]["seconds"], 1),
                       "val_hint_iou": None if final is None else round(final["hint_iou"], 4),
                       "val_refined_iou": None if final is None else round(final["refined_iou"], 4)},
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({CHECKPOINT_KEY: entry}, str(out))
    curves = out.with_name(out.stem + "_curves.png")
    plot_outline_curves(history, curves, f"outline refiner on {len(train)} cases (synthetic data)")
    out.with_name(out.stem + "_history.json").write_text(json.dumps(history))
    return {"out": str(out), "curves": str(curves), **entry["provenance"]}


def read_refiner_entry(refiner_file: Path) -> dict[str, Any]:
    """The refiner entry (config, state, provenance) of a ``train-outlines --out`` file."""
    entry = torch.load(str(refiner_file), map_location="cpu", weights_only=False).get(CHECKPOINT_KEY)
    if entry is None:
        raise ConfigError(f"{refiner_file} holds no outline refiner")
    return entry


def attach_refiner(checkpoint: Path, refiner_file: Path, out: Path) -> dict[str, Any]:
    """Write a copy of ``checkpoint`` that also holds the refiner of ``refiner_file``."""
    from model_export.model.network import load_checkpoint

    _, ckpt = load_checkpoint(checkpoint)
    ckpt[CHECKPOINT_KEY] = read_refiner_entry(refiner_file)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, str(out))
    return {"out": str(out), "checkpoint": str(checkpoint), "refiner": str(refiner_file)}
