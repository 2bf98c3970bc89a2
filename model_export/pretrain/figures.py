"""PNG figures of pretraining: loss curves, FCMAE reconstructions, the category similarity matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(history: list[dict], path: Path, keys: tuple[str, ...], title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [h["step"] for h in history]
    width = max(1, len(history) // 50)
    for key in keys:
        values = np.array([h.get(key, np.nan) for h in history], dtype=float)
        if np.isfinite(values).any():
            if width > 1 and len(values) >= width:
                values = np.convolve(np.pad(values, (width - 1, 0), mode="edge"), np.ones(width) / width, "valid")
            ax.plot(steps, values, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (moving mean of {width})")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_reconstructions(inputs: np.ndarray, masks: np.ndarray, recons: np.ndarray, path: Path, title: str,
                         patch: int = 32) -> None:
    """One row per slice: the input, the input with masked patches blanked, the reconstruction.

    ``inputs`` and ``recons`` are (N, S, S) of one channel; ``masks`` (N, h, w) bool, True = masked.
    """
    plt = _pyplot()
    n = len(inputs)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for i in range(n):
        full_mask = np.kron(masks[i].astype(np.uint8), np.ones((patch, patch), dtype=np.uint8)).astype(bool)
        vmax = float(np.percentile(inputs[i], 99.5)) or 1.0
        masked = np.where(full_mask, np.nan, inputs[i])
        for j, (image, name) in enumerate(((inputs[i], "input"), (masked, "masked (60%)"),
                                           (recons[i], "reconstruction"))):
            ax = axes[i, j]
            cmap = plt.get_cmap("gray").with_extremes(bad=(0.2, 0.3, 0.5))
            ax.imshow(image, cmap=cmap, vmin=0.0, vmax=vmax)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_similarity(names: list[str], matrices: dict[str, np.ndarray], path: Path, title: str) -> None:
    """Cosine similarity of the category embeddings, one panel per matrix (e.g. before and after)."""
    plt = _pyplot()
    panels = list(matrices.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(8.5 * len(panels), 8), squeeze=False)
    for ax, (label, sim) in zip(axes[0], panels, strict=True):
        im = ax.imshow(sim, cmap="viridis", vmin=float(np.min(sim)), vmax=1.0)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(label, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
