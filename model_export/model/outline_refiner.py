"""The outline refiner: a small U-Net that redraws one delivered structure on one slice, close up.

It reads ``service.infer.outline_crops`` inputs (T2, T1, the structure's delivered mask and the other
structures' mask, on a square of about the acquisition's spacing) and returns the structure's mask logits
on that square. It does not know which structure it draws: the hint says where and what kind, the image
says where the edges are. That is a far smaller problem than naming 19 classes on a whole slice, so it
learns in minutes on a CPU what the segmenter's outlines lack after an hour (model_export/RESULTS.md).

It is trained on the true outlines with hints spoilt the ways a coarse segmenter spoils them
(``model_export.training.outline_training``), so it does not depend on one segmenter's errors and works
behind any checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from service.infer.model import normalised_channels
from service.infer.outline_crops import OutlineRefiner, OutlineSpec, refined_labels
from service.ontology import Ontology

CHECKPOINT_KEY = "outline_refiner"
"""Where ``lumbar-ai train-outlines`` puts the refiner in a segmenter's checkpoint: config, state and
provenance; ``evaluate``, ``tune-thresholds`` and ``export`` pick it up from there."""


@dataclass(frozen=True)
class OutlineRefinerConfig:
    widths: tuple[int, ...] = (8, 16, 32, 64)
    """Channels per level; each level after the first halves the grid (128 pixels end at 16). Twice as
    wide (16 32 64 96) was 0.004 mIoU better on 16 validation studies (not significant) at 1.75 times the
    time (model_export/RESULTS.md, session 13)."""
    crop: OutlineSpec = OutlineSpec()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "widths": list(self.widths), "crop": self.crop.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutlineRefinerConfig:
        return cls(tuple(int(w) for w in data["widths"]), OutlineSpec.from_card(data["crop"]))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class OutlineRefinerNet(nn.Module):
    """(N, C, P, P) inputs (``OutlineSpec.input_channels``) -> (N, P, P) logits of the hinted structure."""

    def __init__(self, cfg: OutlineRefinerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = cfg.widths
        self.down = nn.ModuleList([_block(cfg.crop.input_channels if i == 0 else widths[i - 1], w)
                                   for i, w in enumerate(widths)])
        self.up = nn.ModuleList([_block(widths[i] + widths[i + 1], widths[i]) for i in range(len(widths) - 1)])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = self.up[i](torch.cat([skips[i], x], dim=1))
        return self.head(x)[:, 0]


def load_outline_refiner(ckpt: dict[str, Any]) -> OutlineRefinerNet | None:
    """The checkpoint's outline refiner in eval mode, or None when it has none."""
    entry = ckpt.get(CHECKPOINT_KEY)
    if entry is None:
        return None
    model = OutlineRefinerNet(OutlineRefinerConfig.from_dict(entry["config"]))
    model.load_state_dict(entry["state"])
    return model.eval()


def torch_outline_refiner(net: OutlineRefinerNet, t2: np.ndarray | None, t1: np.ndarray | None, grid: Any,
                          ontology: Ontology) -> OutlineRefiner:
    """The torch refiner bound to one study, as ``OnnxModel.outline_refiner`` binds the ONNX graph."""

    def segment(inputs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(inputs)).numpy()

    return OutlineRefiner(normalised_channels(t2, t1), grid, net.cfg.crop, refined_labels(ontology), segment)
