"""Compare where a model's per-level findings are pooled, each with thresholds tuned on validation cases.

Three poolings of the same predictions:

* ``raw``: inside the model's own soft classes, scored against the model's raw labels;
* ``delivered_model_classes``: the same probabilities, carried to the levels post-processing delivers
  (what the worker did before finding maps existed);
* ``delivered_structures``: the finding maps pooled inside each delivered structure (what it does now),
  each mask widened as the model was trained (``finding_pool_dilation``), or the level classifier's
  scores of each delivered structure for a checkpoint that has one;
* ``delivered_structures_widened_N`` for each ``--dilations N``: the same with the masks widened by N
  feature pixels instead, to ask whether a model trained without widening gains from it at serving
  (the same as ``delivered_structures`` for a model with a level classifier).

Thresholds are the best-F1 ones on the validation cases, per pooling, so each is measured at its best
operating point; the mean AUC over findings compares them without any threshold.

    python -m model_export.evaluation.finding_pooling --checkpoint tuned.pt --val data/val \
        --test data/heldout --out pooling.json [--dilations 0 3]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

POOLINGS = ("raw", "delivered_model_classes", "delivered_structures")
WIDENED = "delivered_structures_widened_"


def pooling_names(dilations: list[int] | tuple[int, ...] = ()) -> tuple[str, ...]:
    return POOLINGS + tuple(f"{WIDENED}{d}" for d in dilations)


def finding_pairs(predictor: Any, cases: list, poolings: tuple[str, ...] = POOLINGS
                  ) -> dict[str, dict[str, list[tuple[float, bool]]]]:
    """pooling -> finding key -> (probability, truth) per level the truth states; the model runs once
    per case whatever the number of poolings."""
    from model_export.evaluation.evaluate import delivered_output, finding_decisions
    from service.infer.finding_maps import FindingMaps

    ontology = predictor.ontology
    out: dict[str, dict[str, list[tuple[float, bool]]]] = {
        p: {f.key: [] for f in ontology.findings} for p in poolings}
    for case in cases:
        labels, probs, maps = predictor.run(case)
        for pooling in poolings:
            if pooling == "raw":
                pred_labels, pred_probs = labels, probs
            else:
                pooled_maps = maps if pooling == "delivered_structures" else None
                if pooling.startswith(WIDENED) and isinstance(maps, FindingMaps):
                    pooled_maps = replace(maps, dilation=int(pooling[len(WIDENED):]))
                pred_labels, pred_probs = delivered_output(labels, probs, pooled_maps, case, {}, ontology)
            for _, key, p, actual in finding_decisions(case, pred_labels, pred_probs):
                out[pooling][key].append((p, actual))
    return out


def auc(pairs: list[tuple[float, bool]]) -> float | None:
    """Probability that a positive level scores above a negative one (ties count half); None without both."""
    probs = np.array([p for p, _ in pairs], dtype=float)
    actual = np.array([a for _, a in pairs], dtype=bool)
    pos, neg = probs[actual], probs[~actual]
    if pos.size == 0 or neg.size == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def compare(val_pairs: dict, test_pairs: dict) -> dict[str, Any]:
    from model_export.evaluation.metrics import Counts
    from model_export.training.loop import tune_thresholds

    report: dict[str, Any] = {}
    for pooling in val_pairs:
        thresholds = tune_thresholds(val_pairs[pooling])
        overall, per_finding = Counts(), {}
        for key, pairs in test_pairs[pooling].items():
            counts = Counts()
            for p, actual in pairs:
                counts.add(p >= thresholds[key], actual)
            overall = overall.merged(counts)
            per_finding[key] = {"auc": auc(pairs), "threshold": thresholds[key], **counts.rates()}
        aucs = [v["auc"] for v in per_finding.values() if v["auc"] is not None]
        report[pooling] = {"overall": overall.rates(), "mean_auc": float(np.mean(aucs)) if aucs else None,
                           "per_finding": per_finding}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a text-guided or visual-only checkpoint")
    parser.add_argument("--val", type=Path, required=True, help="validation cases: thresholds are tuned here")
    parser.add_argument("--test", type=Path, required=True, help="held-out cases: the rates are measured here")
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    parser.add_argument("--dilations", type=int, nargs="*", default=[], metavar="N",
                        help="also pool inside delivered masks widened by N feature pixels")
    args = parser.parse_args(argv)
    if any(d < 0 for d in args.dilations):
        parser.error("--dilations: widths are feature pixels, 0 or more")

    from model_export.data import load_cases
    from model_export.evaluation.evaluate import load_predictor
    from service.errors import LumbarAIError

    try:
        predictor = load_predictor(args.checkpoint)
        if predictor.kind == "unet":
            raise LumbarAIError(f"{args.checkpoint} has no finding head (a U-Net baseline)")
        poolings = pooling_names(args.dilations)
        val = finding_pairs(predictor, load_cases(args.val, predictor.ontology), poolings)
        test = finding_pairs(predictor, load_cases(args.test, predictor.ontology), poolings)
    except LumbarAIError as exc:
        parser.exit(2, f"finding_pooling: {exc}\n")
    report = compare(val, test)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for pooling, r in report.items():
        o = r["overall"]
        print(f"{pooling}: recall {o['recall']}, precision {o['precision']}, FPR {o['fpr']}, mean AUC {r['mean_auc']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
