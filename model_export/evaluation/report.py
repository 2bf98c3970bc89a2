"""The evaluation table as Markdown, JSON and a bar plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model_export.evaluation.metrics import LOSS_CAUSES


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown(summary: dict[str, Any]) -> str:
    models = summary["models"]
    lines = ["# Evaluation", "", "Definitions:", ""]
    lines += [f"- **{k}**: {v}" for k, v in summary["definitions"].items()]
    lines += ["", "## Segmentation", "", "| model | kind | cases | mIoU (SD) | Dice (SD) | level-free mIoU | s/case |",
              "|---|---|---|---|---|---|---|"]
    for m in models:
        lines.append(f"| {m['name']} | {m['kind']} | {m['cases']} | {_f(m['miou'])} ({_f(m['miou_sd'])}) | "
                     f"{_f(m['dice'])} ({_f(m['dice_sd'])}) | {_f(m.get('kind_miou'))} | "
                     f"{_f(m['seconds_per_case'], 2)} |")
    lines += ["", "## Where the mIoU is lost (see miou_loss above; the parts sum to 1 - mIoU)", "",
              "| model | " + " | ".join(LOSS_CAUSES) + " |", "|---|" + "---|" * len(LOSS_CAUSES)]
    for m in models:
        loss = m.get("miou_loss") or {}
        lines.append(f"| {m['name']} | " + " | ".join(_f(loss.get(c)) for c in LOSS_CAUSES) + " |")
    lines += ["", "## Per structure (Dice / IoU, mean over cases where defined)", "",
              "| structure | " + " | ".join(m["name"] for m in models) + " |",
              "|---|" + "---|" * len(models)]
    for structure in models[0]["per_structure"]:
        cells = [f"{_f(m['per_structure'][structure]['dice'])} / {_f(m['per_structure'][structure]['iou'])}"
                 for m in models]
        lines.append(f"| {structure} | " + " | ".join(cells) + " |")
    lines += ["", "## Findings, counted per level", "",
              "| model | finding | TP | FP | TN | FN | recall | precision | FPR |", "|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        if not m["findings"]:
            lines.append(f"| {m['name']} | (no finding head) | | | | | | | |")
            continue
        rows = list(m["findings"]["per_finding"].items()) + [("**overall**", m["findings"]["overall"])]
        for key, r in rows:
            lines.append(f"| {m['name']} | {key} | {r['tp']} | {r['fp']} | {r['tn']} | {r['fn']} | "
                         f"{_f(r['recall'])} | {_f(r['precision'])} | {_f(r['fpr'])} |")
    lines += ["", "## Paired tests over cases (Wilcoxon signed-rank, two-sided; Cohen's d of paired differences)", "",
              "| reference | other | metric | mean diff | p | d |", "|---|---|---|---|---|---|"]
    for c in summary["comparisons"]:
        for metric in ("miou", "dice"):
            r = c[metric]
            lines.append(f"| {c['reference']} | {c['other']} | {metric} | {_f(r['mean_difference'], 4)} | "
                         f"{_f(r['p_value'], 4)} | {_f(r['cohens_d'], 2)} |")
    return "\n".join(lines) + "\n"


def bar_plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = summary["models"]
    structures = list(models[0]["per_structure"])
    x = np.arange(len(structures))
    width = 0.8 / len(models)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [4, 1]})
    for i, m in enumerate(models):
        values = [m["per_structure"][s]["dice"] or 0.0 for s in structures]
        ax.bar(x + i * width, values, width, label=m["name"])
        ax2.bar(i, m["miou"], yerr=m["miou_sd"], capsize=4, label=m["name"])
    ax.set_xticks(x + width * (len(models) - 1) / 2, structures, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("Dice (mean over cases)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax2.set_xticks(range(len(models)), [m["name"] for m in models], rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("mIoU (SD over cases)")
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def worst_cases_plot(results: list, path: Path) -> None:
    """Per result (ModelResult), its lowest-mIoU cases: T2, truth and prediction on the slice where they
    disagree most, so the reader sees what kind of error the figures stand for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [(r.name, view) for r in results for view in r.worst_cases]
    fig, axes = plt.subplots(len(rows), 3, figsize=(10, 3.4 * len(rows)), squeeze=False)
    colours = plt.get_cmap("tab20", 20)
    for (name, view), ax in zip(rows, axes, strict=True):
        panels = [("T2", None, ""), ("truth", view.truth, ""), (name, view.prediction, f", mIoU {view.miou:.2f}")]
        for a, (title, labels, score) in zip(ax, panels, strict=True):
            a.imshow(view.image, cmap="gray")
            if labels is not None:
                a.imshow(np.ma.masked_equal(labels, 0), cmap=colours, vmin=0, vmax=19, alpha=0.5,
                         interpolation="nearest")
            a.set_title(f"{title}: {view.name} slice {view.slice_index}{score}", fontsize=8)
            a.axis("off")
    fig.suptitle("Lowest-mIoU cases (the slice with the most wrong voxels); synthetic data", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / len(rows)))  # room for the title above the first row
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_reports(summary: dict[str, Any], out_dir: Path, worst_of: list | None = None) -> dict[str, Path]:
    """evaluation.json/.md/.png; with ``worst_of`` (the reference model's ModelResults, raw and delivered)
    also worst_cases.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "evaluation.json", "markdown": out_dir / "evaluation.md", "png": out_dir / "evaluation.png"}
    paths["json"].write_text(json.dumps(summary, indent=2))
    paths["markdown"].write_text(markdown(summary))
    bar_plot(summary, paths["png"])
    if worst_of and any(r.worst_cases for r in worst_of):
        paths["worst_cases"] = out_dir / "worst_cases.png"
        worst_cases_plot([r for r in worst_of if r.worst_cases], paths["worst_cases"])
    return paths
