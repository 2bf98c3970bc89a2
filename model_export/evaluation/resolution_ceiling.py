"""The best mIoU a model could reach if its class maps lived on a coarser grid than the acquisition.

Each case's true labels are padded to a square (as the model input is), turned into one-hot class maps,
averaged down to an ``n x n`` grid (area averaging: a perfect soft prediction at that grid), resized back
bilinearly and taken by argmax, as the fusion head's class maps are. What survives is the ceiling that
the grid alone puts on the mean IoU, before any learning. It is the figure behind the decoder's stride.

    python -m model_export.evaluation.resolution_ceiling --data data/heldout --grid 80 160
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model_export.evaluation.metrics import overlap_per_structure
from service.infer.model import pad_to_square, square_side


def round_trip(labels: np.ndarray, grid: int, num_classes: int) -> np.ndarray:
    """``labels`` (n, rows, cols) through soft class maps on a ``grid`` x ``grid`` square and back."""
    _, rows, cols = labels.shape
    side = square_side(rows, cols)
    square = torch.from_numpy(pad_to_square(labels).astype(np.int64))
    onehot = F.one_hot(square, num_classes).permute(0, 3, 1, 2).float()
    if grid < side:
        coarse = F.adaptive_avg_pool2d(onehot, grid)
    else:
        coarse = F.interpolate(onehot, size=(grid, grid), mode="bilinear", align_corners=False)
    back = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    return back.argmax(1).numpy().astype(np.uint8)[:, :rows, :cols]


def ceiling_miou(labels: np.ndarray, grid: int, structure_labels: list[int]) -> float:
    """Mean IoU over the structures present, of the round trip against the labels themselves."""
    scores = overlap_per_structure(round_trip(labels, grid, max(structure_labels) + 1), labels, structure_labels)
    return float(np.mean([iou for _, iou in scores.values()])) if scores else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="cases with labels (any layout train reads)")
    parser.add_argument("--grid", type=int, nargs="+", default=[80, 160], help="grid sizes to try")
    parser.add_argument("--max-cases", type=int, default=None)
    args = parser.parse_args(argv)

    from model_export.data import discover_cases
    from service.errors import LumbarAIError
    from service.ontology import DEFAULT_ONTOLOGY

    labels = [s.label for s in DEFAULT_ONTOLOGY.structures]
    try:
        found = discover_cases(args.data)[: args.max_cases]
        if not found:
            raise LumbarAIError(f"no cases in {args.data}")
        cases = [load() for _, load in found]
    except LumbarAIError as exc:
        parser.exit(2, f"resolution_ceiling: {exc}\n")
    for grid in args.grid:
        per_case = [ceiling_miou(c.labels, grid, labels) for c in cases]
        print(f"grid {grid}: mIoU ceiling {np.mean(per_case):.3f} (SD {np.std(per_case):.3f}, {len(cases)} cases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
