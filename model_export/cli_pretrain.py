"""``lumbar-ai pretrain image|text|compare``: self-supervised pretraining of the two encoders.

``image``: FCMAE masked autoencoding of the ConvNeXt V2 encoder on unlabelled studies (DICOM or NIfTI
folders, generated studies with their labels ignored). ``text``: CLIP-style alignment of the text
encoder with image embeddings on (study, report) pairs, or SimCSE on reports alone (``--text-only``).
``compare``: fine-tune with and without the pretrained encoders under one budget and test the difference.
Sizes default to those of a named training config (``--config``), so the checkpoints fit
``lumbar-ai train --config NAME --init-image ... --init-text ...``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    from model_export.configs import CONFIGS

    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and figures")
    p.add_argument("--config", default="demo", choices=sorted(CONFIGS),
                   help="training config whose encoder size, input size and embedding width to match")
    p.add_argument("--encoder", default=None, help="ConvNeXt V2 size, overriding the config's")
    p.add_argument("--input-size", type=int, default=None, help="slice size, overriding the config's")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=None, help="stop after this many seconds of training")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="pretrain_command", required=True, metavar="{image,text,compare}")
    image = sub.add_parser("image", help="FCMAE masked autoencoding of the image encoder on unlabelled studies")
    image.add_argument("--data", type=Path, required=True, help="DICOM/NIfTI folders or generated studies")
    _common(image)
    image.add_argument("--mask-ratio", type=float, default=None, help="share of 32-pixel patches masked (0.6)")
    image.add_argument("--decoder-dim", type=int, default=None)
    image.add_argument("--lr", type=float, default=None)
    image.add_argument("--max-studies", type=int, default=None, help="read only the first N studies")
    image.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")

    text = sub.add_parser("text", help="CLIP-style (or text-only SimCSE) pretraining of the text encoder")
    text.add_argument("--data", type=Path, default=None,
                      help="studies with report.txt each, or DICOM studies matched to --reports by StudyInstanceUID")
    text.add_argument("--reports", type=Path, default=None, help="CSV or JSONL of StudyInstanceUID,report")
    text.add_argument("--text-only", action="store_true", help="SimCSE on the reports alone (no images)")
    text.add_argument("--text-model", type=Path, default=None, help="local Hugging Face model directory")
    text.add_argument("--init-image", type=Path, default=None,
                      help="FCMAE checkpoint for the (frozen) image tower; random weights otherwise")
    text.add_argument("--max-length", type=int, default=None, help="report tokens kept (128)")
    text.add_argument("--embed-dim", type=int, default=None, help="shared embedding width, overriding the config's")
    _common(text)

    compare = sub.add_parser("compare", help="fine-tune with and without pretraining; paired test on held-out")
    compare.add_argument("--labelled", type=Path, required=True, help="labelled studies for fine-tuning")
    compare.add_argument("--held-out", type=Path, required=True, help="labelled studies for the test")
    compare.add_argument("--init-image", type=Path, default=None)
    compare.add_argument("--init-text", type=Path, default=None)
    compare.add_argument("--out", type=Path, required=True)
    compare.add_argument("--steps", type=int, default=None, help="fine-tuning steps per arm")


def _overrides(args: argparse.Namespace, names: dict[str, str]) -> dict:
    return {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg, None) is not None}


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from model_export.configs import get_config

    if args.pretrain_command == "compare":
        from model_export.pretrain.compare import compare_pretraining, to_markdown

        summary = compare_pretraining(args.labelled, args.held_out, args.out, args.init_image, args.init_text,
                                      steps=args.steps)
        print(to_markdown(summary))
        return 0
    model = get_config(args.config).model
    if args.pretrain_command == "image":
        from model_export.pretrain.image_loop import ImagePretrainConfig, pretrain_image

        cfg = dataclasses.replace(ImagePretrainConfig(encoder=model.encoder, input_size=model.input_size),
                                  **_overrides(args, {"steps": "steps", "encoder": "encoder", "input_size": "input_size", "budget_s": "time_budget_s",
                                                      "batch_size": "batch_size", "seed": "seed",
                                                      "mask_ratio": "mask_ratio", "decoder_dim": "decoder_dim",
                                                      "lr": "lr"}))
        path = pretrain_image(args.data, cfg, args.out, resume=args.resume, max_studies=args.max_studies,
                              progress=not args.no_progress)
        print(f"checkpoint: {path}")
        print(f"fine-tune with: lumbar-ai train --config {args.config} --init-image {path} ...")
        return 0
    from model_export.pretrain.text_loop import TextPretrainConfig, pretrain_text

    text_model = str(args.text_model) if args.text_model is not None else model.text_model
    cfg = dataclasses.replace(
        TextPretrainConfig(objective="simcse" if args.text_only else "clip", text_model=text_model,
                           embed_dim=model.embed_dim, encoder=model.encoder, input_size=model.input_size),
        **_overrides(args, {"steps": "steps", "budget_s": "time_budget_s", "batch_size": "batch_size",
                            "seed": "seed", "max_length": "max_length", "encoder": "encoder",
                            "input_size": "input_size", "embed_dim": "embed_dim"}))
    path = pretrain_text(args.data, cfg, args.out, reports_file=args.reports, init_image=args.init_image,
                         progress=not args.no_progress)
    checks = json.loads((Path(args.out) / "similarity.json").read_text())["neighbourhood"]
    for when in ("before", "after"):
        c = checks[when]
        print(f"category terms {when}: L4/L5~L5/S1 > L4/L5~T12 vertebra: {c['example']}; "
              f"triplet accuracy {c['triplet_accuracy']:.3f}")
    print(f"checkpoint: {path}")
    print(f"fine-tune with: lumbar-ai train --config {args.config} --init-text {path} ...")
    return 0
