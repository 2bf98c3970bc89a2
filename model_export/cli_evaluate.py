"""``lumbar-ai evaluate``: the comparison table of several models on held-out studies."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=Path, nargs="+", required=True,
                        help="checkpoints (.pt) or model directories; the first is tested against the others")
    parser.add_argument("--names", nargs="*", default=None, help="display names, one per model")
    parser.add_argument("--data", type=Path, required=True, help="held-out cases (same layouts as train)")
    parser.add_argument("--out", type=Path, required=True, help="folder for evaluation.md/.json/.png")
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--subset", choices=["validation", "training", "all"], default="validation",
                        help="real labelled case folders (case.json): which cases of the split to score "
                             "(default: the validation split, never trained on)")
    parser.add_argument("--real-split", type=Path, default=None,
                        help="real cases: a split file {\"validation\": [case names]} (default: the committed split)")
    parser.add_argument("--postprocess", action="store_true",
                        help="also score every model as the service delivers it, after its post-processing "
                             "(levels counted from the sacrum, fragments removed): one more row per model")


def run(args: argparse.Namespace) -> int:
    import torch

    from model_export.data import load_cases
    from model_export.evaluation.evaluate import evaluate_predictor, load_predictor, summarise
    from model_export.evaluation.report import write_reports
    from service.errors import ConfigError
    from service.ontology import DEFAULT_ONTOLOGY

    torch.set_num_threads(2)
    names = args.names or [None] * len(args.models)
    if len(names) != len(args.models):
        raise ConfigError("--names needs one name per model")
    from model_export.real_cases import SPLIT_FILE, discover_real_cases, holds_real_cases, split_real_cases

    if holds_real_cases(args.data):
        from model_export.evaluation.real_evaluate import evaluate_real

        found = split_real_cases(discover_real_cases(args.data), args.real_split or SPLIT_FILE, args.subset)
        cases = [load() for _, load in found[:args.max_cases]]
        if not cases:
            raise ConfigError(f"no {args.subset} cases under {args.data}")
        predictors = [load_predictor(p, n) for p, n in zip(args.models, names, strict=True)]
        evaluate_real(predictors, cases, DEFAULT_ONTOLOGY, args.out)
        print((args.out / "real_evaluation.md").read_text())
        return 0
    cases = load_cases(args.data, DEFAULT_ONTOLOGY, limit=args.max_cases)
    per_model = [evaluate_predictor(load_predictor(p, n), cases, DEFAULT_ONTOLOGY, args.postprocess)
                 for p, n in zip(args.models, names, strict=True)]
    results = [result for group in per_model for result in group]
    paths = write_reports(summarise(results, DEFAULT_ONTOLOGY), args.out, worst_of=per_model[0])
    print(paths["markdown"].read_text())
    return 0
