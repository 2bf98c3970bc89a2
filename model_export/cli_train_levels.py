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
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="a text-guided or visual-only checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="training cases (any training layout)")
    parser.add_argument("--val", type=Path, default=None, help="validation cases, disjoint from --data")
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint copy to write")
    parser.add_argument("--steps", type=int, default=6000,
                        help="optimiser steps (default 6000: about 26 minutes on one core)")
    parser.add_argument("--batch", type=int, default=32, help="levels per step (default 32)")
    parser.add_argument("--variants", type=int, default=2,
                        help="augmented crops cut per level before training, besides the plain one (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--max-cases", type=int, default=None, help="read at most this many cases of each set")
    parser.add_argument("--exclusive", choices=["auto", "none"], default="auto",
                        help="auto: findings that never share a training level (each positive at 20 or more) "
                             "are trained as rivals, and tune-thresholds decides whether the worker reports "
                             "at most one of them per level; none: every finding trains alone")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from model_export.data import discover_cases
    from model_export.training.level_training import add_level_classifier
    from service.errors import ConfigError

    if not 1 <= args.steps <= 1_000_000 or not 1 <= args.batch <= 4096 or not 0 <= args.variants <= 16:
        raise ConfigError("--steps must be 1..1000000, --batch 1..4096 and --variants 0..16")
    torch.set_num_threads(max(1, args.threads))
    if not args.checkpoint.is_file():
        raise ConfigError(f"{args.checkpoint} is not a checkpoint file")
    train = discover_cases(args.data)[:args.max_cases]
    val = None if args.val is None else discover_cases(args.val)[:args.max_cases]
    report = add_level_classifier(args.checkpoint, train, val, args.out, args.steps, args.batch, args.variants,
                                  args.seed, progress=not args.no_progress,
                                  sources={"data_dir": str(args.data),
                                           "val_dir": None if args.val is None else str(args.val)},
                                  exclusive=args.exclusive == "auto")
    print(json.dumps(report, indent=1))
    return 0
