"""Loss and validation curves as a PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def moving_mean(values: list[float], width: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if len(v) < width or width <= 1:
        return v
    kernel = np.ones(width) / width
    return np.convolve(np.pad(v, (width - 1, 0), mode="edge"), kernel, mode="valid")


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    width = max(1, len(history) // 50)
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("total", "segmentation", "findings"):
        if any(key in h for h in history):
            ax_loss.plot(steps, moving_mean([h.get(key, np.nan) for h in history], width), label=key)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel(f"loss (moving mean of {width})")
    ax_loss.legend()
    val = [(h["step"], h["val_dice"]) for h in history if h.get("val_dice") is not None]
    if val:
        ax_val.plot(*zip(*val, strict=True), marker="o")
    ax_val.set_xlabel("step")
    ax_val.set_ylabel("validation mean Dice")
    ax_val.set_ylim(0, 1)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_loss_and_scores(history: list[dict[str, Any]], path: Any, title: str, loss_label: str,
                         scores: dict[str, list[tuple[int, float]]], score_label: str,
                         ylim: tuple[float, float] | None = None, dashed: tuple[str, ...] = ()) -> None:
    """The training loss (moving mean) beside named validation series of (step, score); ``dashed`` names
    reference series drawn without markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    width = max(1, len(history) // 50)
    ax_loss.plot([h["step"] for h in history], moving_mean([h["loss"] for h in history], width))
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel(f"{loss_label} (moving mean of {width})")
    for name, points in scores.items():
        if points:
            style = {"linestyle": "--"} if name in dashed else {"marker": "o"}
            ax_val.plot(*zip(*points, strict=True), label=name, **style)
    ax_val.set_xlabel("step")
    ax_val.set_ylabel(score_label)
    if ylim is not None:
        ax_val.set_ylim(*ylim)
    if any(scores.values()):
        ax_val.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
