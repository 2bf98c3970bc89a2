"""``lumbar-ai export``: a checkpoint to a checked model directory (ONNX graphs, prompt embeddings, card)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="a text-guided checkpoint (final.pt)")
    parser.add_argument("--out", type=Path, required=True, help="model directory, e.g. models/NAME")
    parser.add_argument("--name", default=None, help="model name in the card (default: folder name)")
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--metrics", type=Path, default=None,
                        help="evaluation.json from lumbar-ai evaluate, copied into the model card")
    parser.add_argument("--parity-study", type=Path, default=None,
                        help="a generated study for the label-map check (default: generate one)")
    parser.add_argument("--float32", action="store_true",
                        help="store the weights as float32 (default: float16, computed in float32)")
    parser.add_argument("--with-text-encoder", action="store_true",
                        help="also write text_encoder.onnx and tokenizer.json, so that edited prompts in the card "
                             "are embedded at load (about 90 MB more)")


def run(args: argparse.Namespace) -> int:
    import torch

    from model_export.data import read_generated_study
    from model_export.export import export_model

    torch.set_num_threads(2)
    metrics = json.loads(args.metrics.read_text()) if args.metrics else None
    study = read_generated_study(args.parity_study) if args.parity_study else None
    card = export_model(args.checkpoint, args.out, args.name, args.version, study, metrics,
                        float16=not args.float32, with_text_encoder=args.with_text_encoder)
    print(json.dumps(card["export_parity"], indent=2))
    return 0
