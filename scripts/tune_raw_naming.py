"""Choose ``RAW_NAMING_TRUSTED`` (service/infer/postprocess.py) on cases the model did not report on.

For one checkpoint: predicts the real *training* cases (``--real``, the committed split's training subset)
and generated tuning studies (``--generated``, not the test set), caches the raw label maps, then delivers
each through the service's post-processing at every threshold given and prints, per threshold, the real
bodies named right, studies with every body right and body recall, and the generated delivered mIoU.

    python scripts/tune_raw_naming.py --model runs/real/mixed/final.pt --real ../shared/data/real_labelled \
        --generated runs/data/synth_tune --thresholds 0.8 0.9 0.95 0.98 1.01 --out runs/tune_naming
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--real", type=Path, required=True)
    parser.add_argument("--generated", type=Path)
    parser.add_argument("--thresholds", type=float, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-cases", type=int, help="of each kind (a smoke test)")
    args = parser.parse_args()

    import torch

    import service.infer.postprocess as postprocess_module
    from model_export.data import load_cases
    from model_export.evaluation.evaluate import delivered_levels, load_predictor
    from model_export.evaluation.metrics import overlap_and_loss
    from model_export.evaluation.real_metrics import score_real_case, summarise_real
    from model_export.real_cases import discover_real_cases, split_real_cases
    from model_export.training.prepare import rank_chain
    from service.ontology import DEFAULT_ONTOLOGY as ONT

    torch.set_num_threads(2)
    predictor = load_predictor(args.model)
    real = [load() for _, load in split_real_cases(discover_real_cases(args.real), subset="training")[:args.max_cases]]
    generated = load_cases(args.generated, ONT, limit=args.max_cases) if args.generated else []
    cache = args.out / "raw"
    cache.mkdir(parents=True, exist_ok=True)
    raw = {}
    for case in [*real, *generated]:
        path = cache / (case.name.replace("/", "_") + ".npy")
        if not path.is_file():
            np.save(path, predictor.run(case)[0])
        raw[case.name] = np.load(path)
    chain = rank_chain(ONT)
    rows = []
    for threshold in args.thresholds:
        postprocess_module.RAW_NAMING_TRUSTED = threshold
        scores = [score_real_case(c, delivered_levels(raw[c.name], {}, None, c, {}, ONT).labels, ONT, chain)
                  for c in real]
        summary = summarise_real(scores)
        mious = []
        for case in generated:
            labels = delivered_levels(raw[case.name], {}, None, case, {}, ONT).labels
            stated = [s.label for s in ONT.structures if s.label in case.labelled]
            overlap, _ = overlap_and_loss(labels, case.labels, stated)
            mious.append(float(np.mean([iou for _, iou in overlap.values()])))
        row = {"threshold": threshold, **{k: summary.get(k) for k in ("bodies_named_right", "studies_all_bodies_right",
                                                                          "body_recall")},
               "generated_miou": float(np.mean(mious)) if mious else None}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (args.out / "tuning.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
