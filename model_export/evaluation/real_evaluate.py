"""``lumbar-ai evaluate`` on real labelled case folders: per-case and pooled scores, paired tests, a contact sheet.

Every model is scored as the service delivers it (after ``service.infer.postprocess``: levels counted,
fragments removed, outlines refined where the model has a refiner), and raw. The first model is the
reference for the paired tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model_export.data import Case
from model_export.evaluation.evaluate import Predictor, delivered_levels
from model_export.evaluation.real_metrics import RealCaseScore, case_metric, score_real_case, summarise_real
from model_export.evaluation.stats import paired_comparison
from model_export.training.prepare import rank_chain
from service.ontology import Ontology


def evaluate_real(predictors: list[Predictor], cases: list[Case], ontology: Ontology, out_dir: Path
                  ) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chain = rank_chain(ontology)
    results: dict[str, dict[str, list[RealCaseScore]]] = {}
    sheets: dict[str, list[tuple[Case, np.ndarray]]] = {}
    for predictor in predictors:
        raw_scores, delivered_scores, shown = [], [], []
        for case in cases:
            labels, probs, maps = predictor.run(case)
            refiner = predictor.outline_refiner(case) if predictor.outline_refiner is not None else None
            spine = delivered_levels(labels, probs, maps, case, predictor.thresholds, ontology,
                                     predictor.combiners, predictor.exclusive, refiner)
            raw_scores.append(score_real_case(case, labels, ontology, chain))
            delivered_scores.append(score_real_case(case, spine.labels, ontology, chain))
            shown.append((case, spine.labels))
        results[predictor.name] = {"delivered": delivered_scores, "raw": raw_scores}
        sheets[predictor.name] = shown
    summary = {
        "models": [{"name": name, "output": output, **summarise_real(scores),
                    "per_case": [s.to_dict() for s in scores]}
                   for name, by_output in results.items() for output, scores in by_output.items()],
        "comparisons": _comparisons(results),
    }
    (out_dir / "real_evaluation.json").write_text(json.dumps(summary, indent=1))
    (out_dir / "real_evaluation.md").write_text(markdown(summary))
    for name, shown in sheets.items():
        contact_sheet(shown, ontology, out_dir / f"real_contact_sheet_{_safe(name)}.png", name)
    return summary


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _comparisons(results: dict[str, dict[str, list[RealCaseScore]]]) -> list[dict[str, Any]]:
    names = list(results)
    out = []
    for other in names[1:]:
        a, b = results[names[0]]["delivered"], results[other]["delivered"]
        out.append({"reference": names[0], "other": other, "metric": "per-case body recall or disc Dice",
                    **paired_comparison([case_metric(s) for s in a], [case_metric(s) for s in b])})
    return out


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(summary: dict[str, Any]) -> str:
    lines = ["# Real labelled cases", "",
             "| model | output | cases | disc Dice by name | disc Dice level-free | bodies named right | "
             "studies all right | ranked studies in one run | body recall | studies without soft-tissue labels |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in summary["models"]:
        lines.append(f"| {m['name']} | {m['output']} | {m['cases']} | {_f(m['disc_dice'])} | "
                     f"{_f(m['disc_dice_level_free'])} | {_f(m['bodies_named_right'])} | "
                     f"{_f(m['studies_all_bodies_right'])} | {_f(m['ranked_studies_all_bodies_in_run'])} | "
                     f"{_f(m['body_recall'])} | {_f(m['studies_without_soft_tissue_labels'])} |")
    lines += ["", "## Per case (delivered)", "",
              "| model | case | kind | disc Dice | level-free | bodies right | body recall | soft-tissue voxels | delivered |",
              "|---|---|---|---|---|---|---|---|---|"]
    for m in summary["models"]:
        if m["output"] != "delivered":
            continue
        for c in m["per_case"]:
            bodies = f"{c['bodies_named_right']}/{c['bodies']}" if c["bodies"] else ""
            lines.append(f"| {m['name']} | {c['name']} | {c['kind']} | {_f(c['disc_dice'])} | "
                         f"{_f(c['disc_dice_level_free'])} | {bodies} | {_f(c['body_recall'])} | "
                         f"{c['soft_tissue_voxels']} | {', '.join(c['delivered'])} |")
    if summary["comparisons"]:
        lines += ["", "## Paired tests (Wilcoxon signed-rank, two-sided; d of the paired differences)", "",
                  "| reference | other | metric | mean diff | p | d |", "|---|---|---|---|---|---|"]
        for c in summary["comparisons"]:
            lines.append(f"| {c['reference']} | {c['other']} | {c['metric']} | {_f(c['mean_difference'], 4)} | "
                         f"{_f(c['p_value'], 4)} | {_f(c['cohens_d'], 2)} |")
    return "\n".join(lines) + "\n"


def contact_sheet(shown: list[tuple[Case, np.ndarray]], ontology: Ontology, path: Path, title: str) -> None:
    """Per case the slice with most labelled voxels: image, its labels, the delivered labels with names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = np.zeros((256, 4))
    for s in ontology.structures:
        colours[s.label] = [*(c / 255 for c in s.color), 0.5]
    ranks = np.linspace(0.2, 1.0, 20)
    for i, value in enumerate(range(101, 121)):
        colours[value] = [ranks[i], 1.0 - ranks[i], 0.6, 0.5]
    per_row = 2
    rows = (len(shown) + per_row - 1) // per_row
    fig, axes = plt.subplots(rows, 3 * per_row, figsize=(3.0 * 3 * per_row, 3.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for n, (case, pred) in enumerate(shown):
        k = int(np.argmax((case.labels > 0).reshape(case.labels.shape[0], -1).sum(axis=1)))
        grey = case.reference[k]
        vmax = float(np.percentile(grey, 99.5)) or 1.0
        aspect = case.pixel_spacing[0] / case.pixel_spacing[1]
        cells = axes[n // per_row, 3 * (n % per_row): 3 * (n % per_row) + 3]
        for j, ax in enumerate(cells):
            ax.imshow(grey, cmap="gray", vmin=0, vmax=vmax, aspect=aspect)
            if j == 1:
                ax.imshow(colours[case.labels[k]], aspect=aspect, interpolation="nearest")
            if j == 2:
                ax.imshow(colours[pred[k]], aspect=aspect, interpolation="nearest")
                for s in ontology.structures:
                    where = np.argwhere(pred[k] == s.label)
                    if len(where) > 15:
                        r, c = where.mean(axis=0)
                        ax.text(c, r, s.name.replace(" vertebra", "").replace(" disc", ""), fontsize=5,
                                color="white", ha="center", va="center")
            ax.set_title([f"{case.name} slice {k}", "labels", "delivered"][j], fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
