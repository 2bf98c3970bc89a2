"""Smoke test on a real scan: run a model directory on a sagittal volume file and draw an overlay.

    python -m model_export.evaluation.real_scan --model-dir models/demo \
        --image ../shared/data/real/sct_t2_lumbar.nii.gz --out runs/real_overlay.png

There is no ground truth for the real scan, so besides the PNG this reports what can be checked without
one: which structures were found, how big they are, and whether they stack in anatomical order along the
head-feet axis (a model that labels real anatomy in order lists them cranial to caudal without swaps).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from model_export.data import read_oriented, sagittal_grid
from service.infer.input_view import SliceBox
from service.infer.model import OnnxModel
from service.infer.postprocess import postprocess
from service.ontology import Ontology


def anatomical_order(labels: np.ndarray, ontology: Ontology, min_voxels: int = 50) -> dict[str, Any]:
    """Structures sorted by centroid row (top of image = cranial) and the number of out-of-order pairs."""
    found = []
    for s in ontology.structures:
        where = np.argwhere(labels == s.label)
        if len(where) >= min_voxels:
            found.append((float(where[:, 1].mean()), s.name, len(where)))
    found.sort()
    expected = [s.name for s in reversed(ontology.caudal_to_cranial())]
    rank = {name: i for i, name in enumerate(expected)}
    ranks = [rank[name] for _, name, _ in found]
    swaps = sum(1 for i in range(len(ranks)) for j in range(i + 1, len(ranks)) if ranks[i] > ranks[j])
    return {"cranial_to_caudal": [{"structure": n, "centroid_row": round(r, 1), "voxels": v} for r, n, v in found],
            "out_of_order_pairs": swaps}


def draw_overlay(image: np.ndarray, rows: list[tuple[str, np.ndarray]], model: OnnxModel,
                 spacing: tuple[float, float], out_png: Path, title: str, box: SliceBox | None = None) -> list[int]:
    """Three slices around the one with most foreground: the image, then one overlay per (caption, labels).

    ``box``: the spine band the model read, outlined on the image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    first = rows[0][1]
    foreground = (first > 0).reshape(first.shape[0], -1).sum(axis=1)
    centre = int(np.argmax(foreground)) if foreground.any() else first.shape[0] // 2
    picks = sorted({max(0, centre - 4), centre, min(first.shape[0] - 1, centre + 4)})
    colours = np.zeros((256, 4))
    for s in model.ontology.structures:
        colours[s.label] = [*(c / 255 for c in s.color), 0.45]
    aspect = spacing[0] / spacing[1]
    columns = 1 + len(rows)
    fig, axes = plt.subplots(1, columns * len(picks), figsize=(4.2 * columns * len(picks), 5.5))
    for k, index in enumerate(picks):
        grey = image[index]
        vmax = np.percentile(grey, 99.5) or 1.0
        for j, ax in enumerate(axes[columns * k: columns * (k + 1)]):
            ax.imshow(grey, cmap="gray", vmin=0, vmax=vmax, aspect=aspect)
            ax.set_title(f"slice {index}" + (f" + {rows[j - 1][0]}" if j else ""), fontsize=9)
            ax.axis("off")
            if j == 0:
                if box is not None:
                    ax.add_patch(Rectangle((box.col0 - 0.5, box.row0 - 0.5), box.cols, box.rows, fill=False,
                                           edgecolor="yellow", linestyle="--", linewidth=0.8))
                    ax.text(box.col0 + 2, max(box.row0, 0) + 8, "band read", color="yellow", fontsize=6)
                    ax.set_xlim(-0.5, grey.shape[1] - 0.5)
                    ax.set_ylim(grey.shape[0] - 0.5, -0.5)
                continue
            labels = rows[j - 1][1]
            ax.imshow(colours[labels[index]], aspect=aspect, interpolation="nearest")
            for s in model.ontology.structures:
                where = np.argwhere(labels[index] == s.label)
                if len(where) > 20:
                    r, c = where.mean(axis=0)
                    ax.text(c, r, s.name.replace(" vertebra", "").replace(" disc", ""), fontsize=6,
                            color="white", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return picks


def overlay_real_scan(model_dir: Path, image_path: Path, out_png: Path) -> dict[str, Any]:
    import SimpleITK as sitk

    oriented = read_oriented(image_path)
    volume = sitk.GetArrayFromImage(oriented).astype(np.float32)  # (slices, rows, cols), sagittal axes
    spacing = (float(oriented.GetSpacing()[1]), float(oriented.GetSpacing()[0]))
    model = OnnxModel.load(model_dir, intra_op_threads=2)
    grid = sagittal_grid(volume, spacing, oriented.GetSpacing()[2], np.array(oriented.GetDirection()))
    prediction = model.predict(volume, None, spacing, grid=grid)
    delivered = postprocess(prediction.labels, prediction.finding_probs, model.ontology, model.finding_thresholds,
                            grid, prediction.finding_maps, model.finding_combiners, model.exclusive_findings,
                            prediction.outline_refiner)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    picks = draw_overlay(volume, [("model", prediction.labels), ("post-processed", delivered.labels)], model,
                         spacing, out_png,
                         f"{Path(image_path).name}: {model.card['name']} {model.version} (T2 only, T1 absent)",
                         box=prediction.box if model.view.has_band else None)
    summary = {"image": str(image_path), "shape": list(volume.shape), "slices_drawn": picks,
               **anatomical_order(prediction.labels, model.ontology),
               "post_processed": anatomical_order(delivered.labels, model.ontology),
               "finding_probs": {model.ontology.by_label(k).name: v for k, v in prediction.finding_probs.items()},
               "findings_delivered": {lv.name: {f.key: f.probability for f in lv.findings if f.present}
                                      for lv in delivered.levels if any(f.present for f in lv.findings)},
               "timings_s": prediction.timings,
               "band_box": prediction.box.to_dict() if prediction.box and model.view.has_band else None}
    out_png.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="overlay a model's prediction on a real sagittal scan")
    parser.add_argument("--model-dir", type=Path, default=Path("models/demo"))
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="PNG path (a .json summary is written beside it)")
    args = parser.parse_args(argv)
    summary = overlay_real_scan(args.model_dir, args.image, args.out)
    print(json.dumps({k: summary[k] for k in ("shape", "cranial_to_caudal", "out_of_order_pairs", "post_processed",
                                            "findings_delivered")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
