"""``lumbar-ai tune-thresholds``: set a checkpoint's finding decision thresholds on a validation set.

Training tunes them on its few validation cases (4 by default), where a finding has a handful of positive
levels at most, so the best-F1 threshold is mostly noise. This reruns the model on a larger validation set
(never the held-out test set) and writes a copy of the checkpoint with the new thresholds; ``export``
carries them into the model card, where the worker reads them.

By default the probabilities are the delivered ones: after post-processing, pooled inside the structures
the report shows, since those are what the thresholds decide on in the worker. ``--on raw`` tunes the
model's own per-class probabilities instead, as training does.

On delivered probabilities it also fits a combiner per disc finding (``--combine morphometry``, the
default): the model's score together with the delivered disc's morphometry (evaluation/combiner_fit.py),
kept only where its cross-validated AUC beats the model's score. ``--combine none`` leaves the model's
scores alone.

A checkpoint whose level classifier was trained with exclusive groups (findings that never share a
training level) gets, for each group, the decision whether the worker reports only the member furthest
over its threshold: kept in ``exclusive_findings`` where that raises the group's F1 on the delivered
validation levels (evaluation/exclusive_fit.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="a text-guided or visual-only checkpoint")
    parser.add_argument("--data", type=Path, required=True,
                        help="validation cases (any training layout), disjoint from training and test sets")
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint copy to write")
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--on", choices=["delivered", "raw"], default="delivered",
                        help="probabilities after post-processing (what the worker decides on) or the raw model's")
    parser.add_argument("--combine", choices=["morphometry", "none"], default="morphometry",
                        help="fit disc finding combiners over the model's score and the disc's measurements "
                             "(delivered probabilities only)")


def run(args: argparse.Namespace) -> int:
    import torch

    from model_export.data import load_cases
    from model_export.evaluation.combiner_fit import level_rows, score_pairs, select_combiner
    from model_export.evaluation.evaluate import load_predictor
    from model_export.evaluation.exclusive_fit import select_exclusive
    from model_export.evaluation.finding_pooling import finding_pairs
    from model_export.model.level_classifier import CHECKPOINT_KEY
    from model_export.training.loop import threshold_report, tune_thresholds
    from service.errors import ConfigError
    from service.infer.level_findings import FindingCombiner

    torch.set_num_threads(2)
    if not args.checkpoint.is_file():
        raise ConfigError(f"{args.checkpoint} is not a checkpoint file")
    predictor = load_predictor(args.checkpoint)  # ConfigError when unreadable
    if predictor.kind == "unet":
        raise ConfigError(f"{args.checkpoint} has no finding head (a U-Net baseline): nothing to tune")
    cases = load_cases(args.data, predictor.ontology, limit=args.max_cases)
    if not cases:
        raise ConfigError(f"no validation cases in {args.data}")
    combiners, combined = {}, {}
    if args.on == "delivered":
        rows = level_rows(predictor, cases)
        pairs = score_pairs(rows)
        if args.combine == "morphometry":
            for finding in predictor.ontology.findings_at("disc"):
                combiner, combined[finding.key] = select_combiner(finding.key, rows)
                if combiner is not None:
                    combiners[finding.key] = combiner.to_dict()
    else:
        pairs = finding_pairs(predictor, cases, ("raw",))["raw"]
    thresholds = tune_thresholds(pairs)
    ckpt = torch.load(str(args.checkpoint), map_location="cpu", weights_only=False)  # the copy to write
    report = threshold_report(pairs, thresholds)
    candidates = ckpt.get(CHECKPOINT_KEY, {}).get("provenance", {}).get("exclusive_groups", [])
    exclusive, exclusive_report = [], {}
    if args.on == "delivered" and candidates:
        exclusive, exclusive_report = select_exclusive(
            candidates, rows, thresholds, {k: FindingCombiner.from_dict(k, d) for k, d in combiners.items()},
            predictor.ontology)
    ckpt["finding_thresholds"] = thresholds
    ckpt["finding_combiners"] = combiners
    ckpt["exclusive_findings"] = exclusive
    ckpt.setdefault("provenance", {})["thresholds_tuned_on"] = {
        "data_dir": str(args.data), "cases": [c.name for c in cases], "probabilities": args.on,
        "per_finding": report, "combiners": combined, "exclusive": exclusive_report}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, str(args.out))
    print(json.dumps({"cases": len(cases), "per_finding": report, "combiners": combined,
                      "exclusive": exclusive_report}, indent=1))
    return 0
