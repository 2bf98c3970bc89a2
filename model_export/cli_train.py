"""``lumbar-ai train``: train the text-guided model or a baseline on generated or labelled studies."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from model_export.configs import CONFIGS

    parser.add_argument("--data", type=Path, required=True,
                        help="generated studies, a SPIDER layout (images/, masks/), or case folders with labels.*")
    parser.add_argument("--real", type=Path, default=None, metavar="DIR",
                        help="real labelled case folders (case.json) to mix in; the validation split's cases are left out")
    parser.add_argument("--real-share", type=float, default=0.5,
                        help="with --real: the share of steps drawn from the real cases (default 0.5)")
    parser.add_argument("--real-split", type=Path, default=None,
                        help="with --real: a split file {\"validation\": [case names]} (default: the committed split)")
    parser.add_argument("--config", default="demo", choices=sorted(CONFIGS), help="named configuration")
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, curves.png, history.json")
    parser.add_argument("--variant", choices=["text_guided", "visual_only", "unet"], default="text_guided",
                        help="the model, or one of the two baselines")
    parser.add_argument("--text-model", type=Path, default=None,
                        help="a local Hugging Face model directory for the text encoder (default: packaged MiniLM)")
    parser.add_argument("--steps", type=int, default=None, help="override the config's step count")
    parser.add_argument("--budget-s", type=float, default=None, help="stop after this many seconds of training on --threads dedicated cores (CPU time)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (the budget is per thread count)")
    parser.add_argument("--max-cases", type=int, default=None, help="use only the first N cases")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--init-image", type=Path, default=None,
                        help="start the image encoder from a `lumbar-ai pretrain image` checkpoint")
    parser.add_argument("--init-text", type=Path, default=None,
                        help="start the text encoder from a `lumbar-ai pretrain text` checkpoint")
    parser.add_argument("--finding-dilation", type=int, default=None, metavar="PIXELS",
                        help="widen each structure's mask by this many model pixels before pooling its finding "
                             "logits (training and serving; 0 = off)")
    parser.add_argument("--finding-conv-layers", type=int, default=None, metavar="N",
                        help="3x3 convolutions of the finding branch before its projection (0 = linear)")
    band = parser.add_mutually_exclusive_group()
    band.add_argument("--spine-band", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), default=None,
                      help="also read each slice through a spine band box at this input size (multiples of 32)")
    band.add_argument("--no-spine-band", action="store_true", help="the square view alone, whatever the config says")


def run(args: argparse.Namespace) -> int:
    from model_export.configs import get_config
    from model_export.training.loop import train
    from service.errors import ConfigError

    run_cfg = get_config(args.config).with_kind(args.variant)
    model_changes, train_changes = {}, {}
    if args.text_model is not None:
        model_changes["text_model"] = str(args.text_model)
    if getattr(args, "spine_band", None) is not None:
        height, width = args.spine_band
        if height % 32 or width % 32 or min(height, width) <= 0:
            raise ConfigError(f"--spine-band {height} {width}: both sides must be positive multiples of 32")
        model_changes["band_size"] = (height, width)
    if getattr(args, "no_spine_band", False):
        model_changes["band_size"] = None
    if getattr(args, "finding_dilation", None) is not None:
        if not 0 <= args.finding_dilation <= 16:
            raise ConfigError(f"--finding-dilation {args.finding_dilation}: give 0 to 16 model pixels")
        model_changes["finding_pool_dilation"] = args.finding_dilation
    if getattr(args, "finding_conv_layers", None) is not None:
        if not 0 <= args.finding_conv_layers <= 8:
            raise ConfigError(f"--finding-conv-layers {args.finding_conv_layers}: give 0 to 8")
        model_changes["finding_conv_layers"] = args.finding_conv_layers
    if args.steps is not None:
        train_changes["steps"] = args.steps
    if args.budget_s is not None:
        train_changes["time_budget_s"] = args.budget_s
    if args.seed is not None:
        train_changes["seed"] = args.seed
    if getattr(args, "real", None) is not None:
        if not 0.0 < args.real_share < 1.0:
            raise ConfigError(f"--real-share {args.real_share}: give a share between 0 and 1")
        train_changes["real_share"] = args.real_share
    if args.threads is not None:
        train_changes["threads"] = args.threads
    run_cfg = dataclasses.replace(run_cfg, model=dataclasses.replace(run_cfg.model, **model_changes),
                                  train=dataclasses.replace(run_cfg.train, **train_changes))
    from model_export.pretrain.init import pretrained_initialiser

    model_init = pretrained_initialiser(getattr(args, "init_image", None), getattr(args, "init_text", None))
    path = train(args.data, run_cfg, args.out, resume=args.resume, max_cases=args.max_cases,
                 progress=not args.no_progress, model_init=model_init, real_dir=getattr(args, "real", None),
                 real_split=getattr(args, "real_split", None))
    print(f"checkpoint: {path}")
    return 0
