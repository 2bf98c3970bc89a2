"""Per-level findings pooled inside the delivered structures instead of the model's raw classes.

The fusion head scores every pixel of its feature grid against each finding. Pooled inside the model's
own soft class masks, those scores mix levels whenever the model names a level wrongly (two bodies both
called "L3"), which is the very error post-processing corrects. Pooled inside the counted structures, the
evidence for a level comes from the voxels the report shows as that level. It is also closer to
training, where the pooling masks are the true structures, not the predicted ones.

Pooling is a log-mean-exp (a soft maximum) of the clamped logits, the same as the fusion head's
``finding_sums``, so a focal herniation on a few slices can still raise its level's score.

Each structure's mask may be widened first by ``dilation`` feature pixels in the slice plane (a square
neighbourhood, as the fusion head's max-pool). Why: herniated material carries its disc's label in the
truth, but a model's disc outline stays inside the disc's dark rim, so the pixels that show a herniation
lie just outside the delivered disc. The model is trained with the same widening of the true masks,
which also gives the pixels around each structure a finding loss; without it they are never trained,
and a soft maximum over a delivered mask that strays onto one of them can fire on noise. Measured at one
CPU-hour of training it did not help (model_export/RESULTS.md, session 10), so models use 0 by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import find_objects, maximum_filter

from service.infer.input_view import SliceBox

FINDING_LOGIT_CLAMP = 12.0
"""Logits are clamped before exp so it cannot overflow; the fusion head's finding_sums imports this one."""


def pool_dilation_from_card(card: dict[str, Any]) -> int:
    """The card's ``finding_pooling.dilation_px``; cards from before it pool inside the bare masks (0)."""
    value = card.get("finding_pooling", {}).get("dilation_px", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"finding_pooling.dilation_px must be a non-negative integer, got {value!r}")
    return value


@dataclass
class FindingMaps:
    """Per-slice finding logits on the model's feature grid, which covers a box of the slice."""

    logits: np.ndarray
    """(n_slices, F, h, w) float32, findings in ontology order."""
    box: SliceBox
    """The box of the acquisition grid that the (h, w) feature grid spans (see ``input_view``)."""
    dilation: int = 0
    """Feature pixels by which each structure's mask is widened in the slice plane before pooling."""

    def labels_on_feature_grid(self, labels: np.ndarray) -> np.ndarray:
        """(n, rows, cols) acquisition-grid labels sampled at the feature pixels' centres (outside is 0)."""
        n, h, w = self.logits.shape[0], self.logits.shape[2], self.logits.shape[3]
        if labels.shape[0] != n:
            raise ValueError(f"label map has {labels.shape[0]} slices, finding maps {n}")
        box = self.box
        rows = box.row0 + np.floor((np.arange(h) + 0.5) * box.rows / h).astype(int)
        cols = box.col0 + np.floor((np.arange(w) + 0.5) * box.cols / w).astype(int)
        out = np.zeros((n, h, w), dtype=labels.dtype)
        r_in = (rows >= 0) & (rows < labels.shape[1])
        c_in = (cols >= 0) & (cols < labels.shape[2])
        out[:, np.flatnonzero(r_in)[:, None], np.flatnonzero(c_in)[None, :]] = \
            labels[:, rows[r_in][:, None], cols[c_in][None, :]]
        return out

    def pool(self, labels: np.ndarray) -> dict[int, np.ndarray]:
        """structure label -> (F,) pooled logits, for every label that covers at least one feature pixel."""
        low = self.labels_on_feature_grid(labels)
        expd = np.exp(np.clip(self.logits, -FINDING_LOGIT_CLAMP, FINDING_LOGIT_CLAMP))  # (n, F, h, w)
        out = {}
        for index, found in enumerate(find_objects(low)):
            if found is None:
                continue
            # each structure's box, grown by the widening: a small crop instead of the whole volume
            slices, rows, cols = found
            rows = slice(max(0, rows.start - self.dilation), rows.stop + self.dilation)
            cols = slice(max(0, cols.start - self.dilation), cols.stop + self.dilation)
            mask = self.structure_mask(low[slices, rows, cols], index + 1)
            sums = np.einsum("nhw,nfhw->f", mask, expd[slices, :, rows, cols])
            out[index + 1] = np.log(np.maximum(sums, 1e-30) / mask.sum())
        return out

    def structure_mask(self, low: np.ndarray, label: int) -> np.ndarray:
        """(n, h, w) float mask of ``label`` on the feature grid, widened by ``dilation`` in each slice."""
        mask = (low == label).astype(np.float32)
        if self.dilation > 0:
            size = 2 * self.dilation + 1
            mask = maximum_filter(mask, size=(1, size, size), mode="constant", cval=0.0)
        return mask
