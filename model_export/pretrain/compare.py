"""Does pretraining help? Fine-tune with and without the pretrained encoders under one budget, then test.

Both arms train the same text-guided model on the same labelled studies with the same seed, the same
number of steps and the same augmentation; they differ only in the starting weights of the image
encoder (FCMAE) and the text encoder (CLIP). Both are evaluated on the same held-out studies: mIoU per
case and abnormality F1 per case, compared with the paired Wilcoxon signed-rank test (scipy) and the
paired Cohen's d. Per-case F1 = 2TP / (2TP + FP + FN) over the case's (level, finding) decisions, 1.0
when a case has neither a true nor a predicted finding.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from model_export.configs import ModelConfig, RunConfig, TrainConfig
from service.ontology import DEFAULT_ONTOLOGY

log = logging.getLogger(__name__)

EXPERIMENT_RUN = RunConfig(
    "pretrain-comparison",
    ModelConfig(encoder="pico-mini", input_size=128, decoder_width=32, feat_dim=16, embed_dim=64),
    TrainConfig(steps=600, lr=2e-3, warmup_steps=20, slices_per_step=6, checkpoint_every=10_000,
                validation_cases=4),
)
"""Small enough for 2 shared CPU cores; the arms differ only in their initial weights."""


def case_f1(counts) -> float:
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def evaluate_arm(checkpoint: Path, cases: list, name: str) -> dict[str, Any]:
    from model_export.evaluation.evaluate import evaluate_predictor, load_predictor
    from model_export.evaluation.metrics import Counts

    predictor = load_predictor(checkpoint, name)
    miou, f1, total = [], [], Counts()
    for case in cases:
        result = evaluate_predictor(predictor, [case], DEFAULT_ONTOLOGY)[0]
        miou.append(result.case_miou[0])
        merged = Counts()
        for c in result.findings.values():
            merged = merged.merged(c)
        total = total.merged(merged)
        f1.append(case_f1(merged))
    return {"name": name, "case_names": [c.name for c in cases], "case_miou": miou, "case_f1": f1,
            "miou": float(np.mean(miou)), "f1_mean_over_cases": float(np.mean(f1)),
            "findings_pooled": {**total.rates(), "f1": case_f1(total)}}


def compare_pretraining(labelled: Path, held_out: Path, out_dir: Path, init_image: Path | None,
                        init_text: Path | None, run: RunConfig = EXPERIMENT_RUN, steps: int | None = None,
                        progress: bool = False) -> dict[str, Any]:
    """Train both arms, evaluate them on ``held_out`` and write comparison.json and comparison.md."""
    from model_export.data import load_cases
    from model_export.evaluation.stats import paired_comparison
    from model_export.pretrain.init import pretrained_initialiser
    from model_export.training.loop import train

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if steps is not None:
        run = replace(run, train=replace(run.train, steps=steps))
    arms = {"scratch": None, "pretrained": pretrained_initialiser(init_image, init_text)}
    checkpoints, seconds = {}, {}
    for name, init in arms.items():
        started = time.perf_counter()
        checkpoints[name] = train(labelled, run, out_dir / name, model_init=init, progress=progress)
        seconds[name] = round(time.perf_counter() - started, 1)
        log.info("arm %s trained in %.0f s", name, seconds[name])
    cases = load_cases(held_out)
    results = {name: evaluate_arm(path, cases, name) for name, path in checkpoints.items()}
    a, b = results["pretrained"], results["scratch"]
    summary = {
        "definition": __doc__.strip().split("\n\n", 1)[1],
        "run": run.to_dict(), "init_image": str(init_image), "init_text": str(init_text),
        "labelled": str(labelled), "held_out": str(held_out), "held_out_cases": len(cases),
        "train_seconds": seconds, "arms": results,
        "paired": {"miou": paired_comparison(a["case_miou"], b["case_miou"]),
                   "f1": paired_comparison(a["case_f1"], b["case_f1"])},
    }
    (out_dir / "comparison.json").write_text(json.dumps(summary, indent=1))
    (out_dir / "comparison.md").write_text(to_markdown(summary))
    return summary


def to_markdown(summary: dict[str, Any]) -> str:
    arms, paired = summary["arms"], summary["paired"]

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [f"# Pretraining vs none: {summary['held_out_cases']} held-out studies, "
             f"{summary['run']['train']['steps']} fine-tuning steps per arm", "",
             "| arm | mIoU (mean over cases) | finding F1 (mean over cases) | pooled F1 | recall | precision "
             "| FPR | train s |", "|---|---|---|---|---|---|---|---|"]
    for name, r in arms.items():
        pooled = r["findings_pooled"]
        lines.append(f"| {name} | {fmt(r['miou'])} | {fmt(r['f1_mean_over_cases'])} | {fmt(pooled['f1'])} | "
                     f"{fmt(pooled['recall'])} | {fmt(pooled['precision'])} | {fmt(pooled['fpr'])} | "
                     f"{summary['train_seconds'][name]} |")
    lines += ["", "| metric | mean difference (pretrained - scratch) | Wilcoxon p | Cohen's d (paired) | n |",
              "|---|---|---|---|---|"]
    for metric, p in paired.items():
        lines.append(f"| {metric} | {fmt(p['mean_difference'])} | {fmt(p['p_value'])} | {fmt(p['cohens_d'])} "
                     f"| {p['n']} |")
    lines += ["", summary["definition"], ""]
    return "\n".join(lines)
