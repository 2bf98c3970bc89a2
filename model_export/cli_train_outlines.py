"""``lumbar-ai train-outlines``: train the outline refiner, and put it into a segmenter's checkpoint copy.

The outline refiner (model/outline_refiner.py) redraws each delivered disc and vertebra close up, slice
by slice, after post-processing has named them. It trains on the true outlines of ``--data`` behind
spoilt hints, so it needs no segmenter: ``--out`` receives the refiner alone. With ``--checkpoint`` it
is also put into a copy of that checkpoint (``--into``), which ``evaluate``, ``tune-thresholds`` and
``export`` then use; ``--refiner FILE`` does only that, with a refiner trained before.

    lumbar-ai train-outlines --data runs/data/train --val runs/data/val --out runs/outlines.pt
    lumbar-ai train-outlines --refiner runs/outlines.pt --checkpoint runs/levels.pt --into runs/full.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, help="training cases (any training layout)")
    parser.add_argument("--val", type=Path, default=None, help="validation cases, disjoint from --data")
    parser.add_argument("--out", type=Path, default=None, help="the refiner file to write")
    parser.add_argument("--refiner", type=Path, default=None, help="a refiner trained before: train nothing")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a segmenter checkpoint to copy with the refiner in it (needs --into)")
    parser.add_argument("--into", type=Path, default=None, help="where the checkpoint copy goes")
    parser.add_argument("--steps", type=int, default=3000,
                        help="optimiser steps (default 3000: about 30 minutes on one core)")
    parser.add_argument("--batch", type=int, default=24, help="slice crops per step (default 24)")
    parser.add_argument("--widths", type=int, nargs="+", default=None, metavar="C",
                        help="channels per U-Net level, each level halving the grid (default 8 16 32 64)")
    parser.add_argument("--context-slices", type=int, default=0, metavar="N",
                        help="also read T2 and T1 on N slices either side of the one redrawn (default 0)")
    parser.add_argument("--init", type=Path, default=None, metavar="REFINER",
                        help="continue this refiner file for a further cycle of --steps (its widths and crop)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the cycle (default 3e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--max-cases", type=int, default=None, help="read at most this many cases of each set")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from model_export.data import discover_cases
    from model_export.training.outline_training import attach_refiner, train_refiner_file
    from service.errors import ConfigError
    from service.infer.outline_crops import MAX_CONTEXT_SLICES

    if (args.checkpoint is None) != (args.into is None):
        raise ConfigError("--checkpoint and --into go together")
    if args.refiner is None and (args.data is None or args.out is None):
        raise ConfigError("give --data and --out to train a refiner, or --refiner with --checkpoint and --into")
    if args.refiner is not None and args.checkpoint is None:
        raise ConfigError("--refiner only puts a trained refiner into --checkpoint; give --checkpoint and --into")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise ConfigError(f"{args.checkpoint} is not a checkpoint file")
    if not 1 <= args.steps <= 1_000_000 or not 1 <= args.batch <= 1024:
        raise ConfigError("--steps must be 1..1000000 and --batch 1..1024")
    if args.widths is not None and not (2 <= len(args.widths) <= 6 and all(1 <= w <= 512 for w in args.widths)):
        raise ConfigError("--widths takes 2 to 6 channel counts, each 1..512")
    if not 0 <= args.context_slices <= MAX_CONTEXT_SLICES:
        raise ConfigError(f"--context-slices must be 0..{MAX_CONTEXT_SLICES}")
    if not 0.0 < args.lr <= 1.0:
        raise ConfigError("--lr must be in (0, 1]")
    if args.init is not None and (args.widths is not None or args.context_slices):
        raise ConfigError("--init keeps the refiner's own widths and crop: drop --widths and --context-slices")
    if args.init is not None and not args.init.is_file():
        raise ConfigError(f"--init {args.init} is not a refiner file")
    torch.set_num_threads(max(1, args.threads))
    refiner = args.refiner
    if refiner is None:
        train = discover_cases(args.data)[:args.max_cases]
        val = None if args.val is None else discover_cases(args.val)[:args.max_cases]
        report = train_refiner_file(train, val, args.out, args.steps, args.batch, args.seed,
                                    progress=not args.no_progress, widths=args.widths,
                                    context_slices=args.context_slices, lr=args.lr, init=args.init,
                                    sources={"data_dir": str(args.data),
                                             "val_dir": None if args.val is None else str(args.val)})
        print(json.dumps(report, indent=1))
        refiner = args.out
    elif not refiner.is_file():
        raise ConfigError(f"{refiner} is not a refiner file")
    if args.checkpoint is not None:
        print(json.dumps(attach_refiner(args.checkpoint, refiner, args.into), indent=1))
    return 0
