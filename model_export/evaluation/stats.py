"""Paired comparison of two models over the same cases: Wilcoxon signed-rank and Cohen's d."""

from __future__ import annotations

import numpy as np


def paired_comparison(ours: list[float], theirs: list[float]) -> dict[str, float | int | None]:
    """Two-sided Wilcoxon signed-rank p-value (scipy) and Cohen's d of the paired differences.

    d = mean(ours - theirs) / SD(ours - theirs) (the paired-samples d, often written d_z).
    """
    from scipy.stats import wilcoxon

    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    if a.shape != b.shape:
        raise ValueError("paired samples must have the same length")
    diff = a - b
    out: dict[str, float | int | None] = {"n": int(len(diff)), "mean_difference": float(diff.mean()) if len(diff) else None}
    if len(diff) < 2 or np.allclose(diff, 0):
        out.update(p_value=None, cohens_d=None, statistic=None)
        return out
    result = wilcoxon(a, b, alternative="two-sided")
    sd = float(diff.std(ddof=1))
    out.update(statistic=float(result.statistic), p_value=float(result.pvalue),
               cohens_d=float(diff.mean() / sd) if sd > 0 else None)
    return out
