"""Per-level findings pooled inside the delivered structures instead of the model's raw classes.

The fusion head scores every pixel of its feature grid against each finding. Pooled inside the model's
own soft class masks, those scores mix levels whenever the model names a level wrongly (two bodies both
called "L3"), which is the very error post-processing corrects. Pooled inside the counted structures, the
evidence for a level comes from the voxels the report shows as that level. It is also closer to
training, where the pooling masks are the true structures, not the predicted ones.

Pooling is a log-mean-exp (a soft maximum) of the clamped logits, the same as the fusion head's
``finding_sums``, so a focal herniation on a few slices can still raise its level's score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.infer.input_view import SliceBox

FINDING_LOGIT_CLAMP = 12.0
"""Logits are clamped before exp so it cannot overflow; the fusion head's finding_sums imports this one."""


@dataclass
class FindingMaps:
    """Per-slice finding logits on the model's feature grid, which covers a box of the slice."""

    logits: np.ndarray
    """(n_slices, F, h, w) float32, findings in ontology order."""
    box: SliceBox
    """The box of the acquisition grid that the (h, w) feature grid spans (see ``input_view``)."""

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
        low = self.labels_on_feature_grid(labels).ravel().astype(np.int64)
        if low.size == 0 or not low.any():
            return {}
        counts = np.bincount(low)
        expd = np.exp(np.clip(self.logits, -FINDING_LOGIT_CLAMP, FINDING_LOGIT_CLAMP))
        per_finding = [np.bincount(low, weights=expd[:, f].ravel(), minlength=counts.size)
                       for f in range(self.logits.shape[1])]
        sums = np.stack(per_finding, axis=1)  # (labels, F)
        return {int(label): np.log(np.maximum(sums[label], 1e-30) / counts[label])
                for label in np.flatnonzero(counts) if label != 0}
