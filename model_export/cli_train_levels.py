"""``lumbar-ai train-levels``: train a segmenter's level classifier and write a checkpoint copy holding both.

The level classifier (model/level_classifier.py) scores each delivered disc and vertebra for findings
from fine crops around it, in place of the segmenter's pooled finding maps. It trains on crops around
the true levels of ``--data``, with the segmenter's finding embeddings fixed, and reports its validation
AUC on ``--val`` (true level centres). The copy it writes keeps the segmenter unchanged and sets the
finding thresholds by best F1 on ``--val`` (0.5 without it), with no combiners: run ``tune-thresholds``
on it next, which tunes them on what the worker decides on, the delivered levels. ``evaluate`` and
``export`` then use the classifier wherever the checkpoint goes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="a text-guided or visual-only checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="training cases (any training layout)")
    parser.add_argument("--val", type=Path, default=None, help="validation cases, disjoint from --data")
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint copy to write")
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    parser.add_argument("--batch", type=int, default=32, help="levels per step (default 32)")
    parser.add_argument("--variants", type=int, default=2,
                        help="augmented crops cut per level before training, besides the plain one (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--max-cases", type=int, default=None, help="read at most this many cases of each set")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from model_export.data import discover_cases
    from model_export.evaluation.metrics import best_f1_threshold
    from model_export.model.level_classifier import CHECKPOINT_KEY, LevelClassifierConfig
    from model_export.model.network import LumbarSegmenter, load_checkpoint
    from model_export.training.level_training import (
        level_logits,
        level_samples,
        plot_level_curves,
        train_level_classifier,
    )
    from service.errors import ConfigError
    from service.ontology import Ontology

    if not 1 <= args.steps <= 1_000_000 or not 1 <= args.batch <= 4096 or not 0 <= args.variants <= 16:
        raise ConfigError("--steps must be 1..1000000, --batch 1..4096 and --variants 0..16")
    torch.set_num_threads(max(1, args.threads))
    if not args.checkpoint.is_file():
        raise ConfigError(f"{args.checkpoint} is not a checkpoint file")
    segmenter, ckpt = load_checkpoint(args.checkpoint)
    if not isinstance(segmenter, LumbarSegmenter):
        raise ConfigError(f"{args.checkpoint} is a {ckpt['run']['model']['kind']} model without finding "
                          "embeddings; the level classifier needs a text-guided or visual-only checkpoint")
    ontology = Ontology.from_dict(ckpt["ontology"])
    keys = [f.key for f in ontology.findings]
    with torch.no_grad():
        finding_embeddings = segmenter.class_embeddings()[1].detach()
    cfg = LevelClassifierConfig(embed_dim=int(finding_embeddings.shape[1]))
    progress = not args.no_progress
    started = time.perf_counter()
    train_loaders = discover_cases(args.data, ontology)[:args.max_cases]
    train = level_samples(train_loaders, ontology, cfg.crop, args.variants, args.seed, progress, "training crops")
    if len(train) == 0:
        raise ConfigError(f"no level in {args.data} states a finding: nothing to train the classifier on")
    val = None
    if args.val is not None:
        val_loaders = discover_cases(args.val, ontology)[:args.max_cases]
        val = level_samples(val_loaders, ontology, cfg.crop, 0, args.seed + 1, progress, "validation crops")
    crops_s = time.perf_counter() - started
    classifier, history = train_level_classifier(train, val, finding_embeddings, cfg, keys, args.steps,
                                                 args.batch, seed=args.seed, progress=progress)
    thresholds = {k: 0.5 for k in keys}
    if val is not None and len(val):
        probs = 1.0 / (1.0 + np.exp(-level_logits(classifier, val.crops[:, 0], finding_embeddings)))
        for j, key in enumerate(keys):
            stated = val.known[:, j]
            if stated.any():
                thresholds[key] = best_f1_threshold(probs[stated, j], val.targets[stated, j].astype(bool))
    final_auc = next((h["val_auc"] for h in reversed(history) if "val_auc" in h), None)
    ckpt[CHECKPOINT_KEY] = {
        "config": cfg.to_dict(),
        "state": classifier.state_dict(),
        "provenance": {"data_dir": str(args.data), "cases": len(train_loaders), "levels": len(train),
                       "variants": args.variants, "steps": args.steps, "batch": args.batch, "seed": args.seed,
                       "val_dir": None if args.val is None else str(args.val),
                       "val_levels": 0 if val is None else len(val), "val_auc_true_centres": final_auc,
                       "crop_seconds": round(crops_s, 1),
                       "train_seconds": round(history[-1]["seconds"], 1) if history else 0.0},
    }
    ckpt["finding_thresholds"] = thresholds
    ckpt["finding_combiners"] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, str(args.out))
    curves = args.out.with_name(args.out.stem + "_curves.png")
    plot_level_curves(history, curves, f"level classifier on {len(train)} levels (synthetic data)")
    (args.out.with_name(args.out.stem + "_history.json")).write_text(json.dumps(history))
    print(json.dumps({"out": str(args.out), "curves": str(curves), "levels": len(train),
                      "val_levels": 0 if val is None else len(val), "val_auc_true_centres": final_auc,
                      "thresholds": thresholds}, indent=1))
    return 0
