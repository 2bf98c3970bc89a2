"""The level classifier: a second look at each disc and vertebra, at a fraction of a millimetre a pixel.

The segmenter's finding features come from whole-slice inputs at about 2 mm a pixel, where a 3 mm bulge or
a 5 mm protrusion is a pixel or two. This network reads ``service.infer.level_crops`` instead: a few
sagittal slices around one structure, cropped in patient directions at 0.8 mm a pixel. Each slice is
encoded to a vector in the shared embedding space and scored against the finding embeddings, the same
text embeddings that guide the segmenter's fusion head, so the finding count stays dynamic and a finding
is named by its prompt. A level's logit is the maximum over its slices: a paracentral herniation shows
on one side's slices only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from service.infer.level_crops import CroppedLevels, CropSpec, scored_labels
from service.infer.model import normalised_channels
from service.ontology import Ontology


@dataclass(frozen=True)
class LevelClassifierConfig:
    widths: tuple[int, ...] = (24, 48, 96, 192)
    """Channels per stride-2 stage: 80-pixel crops end at 5 x 5."""
    embed_dim: int = 256
    """The shared embedding space of the finding embeddings (the segmenter's ``embed_dim``)."""
    crop: CropSpec = CropSpec()
    text_projection: bool = True
    """A learned linear map (identity at first) of the finding embeddings before scoring. The segmenter's
    finding embeddings are nearly parallel (cosine 0.87-0.96 among the four disc findings in the band
    model), so scored as they are, the findings' logits barely differ; the map lets the classifier spread
    them apart, the same map for every finding, so the finding count stays free. Checkpoints from before
    it read as False."""

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths), "crop": self.crop.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> LevelClassifierConfig:
        return cls(tuple(int(w) for w in data["widths"]), int(data["embed_dim"]), CropSpec.from_card(data["crop"]),
                   bool(data.get("text_projection", False)))


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.GELU(),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.GELU())


class LevelClassifier(nn.Module):
    """(N levels, K slices, 2, H, W) crops and (F, E) finding embeddings -> (N, F) finding logits."""

    def __init__(self, cfg: LevelClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        stages, cin = [], 2
        for width in cfg.widths:
            stages.append(_stage(cin, width))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.project = nn.Linear(2 * cin, cfg.embed_dim)
        self.text_project: nn.Module = nn.Identity()
        if cfg.text_projection:
            self.text_project = nn.Linear(cfg.embed_dim, cfg.embed_dim)
            with torch.no_grad():
                self.text_project.weight.copy_(torch.eye(cfg.embed_dim))
                self.text_project.bias.zero_()
        self.finding_bias = nn.Linear(cfg.embed_dim, 1)
        """A finding's bias is read from its embedding, so an unseen finding count still works."""
        self.logit_scale = nn.Parameter(torch.tensor(10.0 if cfg.text_projection else 4.0))

    def forward(self, crops: torch.Tensor, finding_embeddings: torch.Tensor) -> torch.Tensor:
        n, k = crops.shape[0], crops.shape[1]
        h = self.stages(crops.flatten(0, 1))
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        image = F.normalize(self.project(pooled), dim=1)
        text = F.normalize(self.text_project(finding_embeddings), dim=1)
        logits = self.logit_scale * (image @ text.T) + self.finding_bias(text).T
        return logits.reshape(n, k, -1).amax(dim=1)


CHECKPOINT_KEY = "level_classifier"
"""Where ``lumbar-ai train-levels`` puts the classifier in a segmenter's checkpoint: config, state and
provenance; ``evaluate``, ``tune-thresholds`` and ``export`` pick it up from there."""


def load_level_classifier(ckpt: dict[str, Any]) -> LevelClassifier | None:
    """The checkpoint's level classifier in eval mode, or None when it has none."""
    entry = ckpt.get(CHECKPOINT_KEY)
    if entry is None:
        return None
    model = LevelClassifier(LevelClassifierConfig.from_dict(entry["config"]))
    model.load_state_dict(entry["state"])
    return model.eval()


def cropped_levels(classifier: LevelClassifier, finding_embeddings: torch.Tensor, t2: np.ndarray | None,
                   t1: np.ndarray | None, grid: Any, ontology: Ontology) -> CroppedLevels:
    """The torch classifier bound to one study, as ``OnnxModel.cropped_levels`` binds the ONNX graph."""

    def classify(crops: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return classifier(torch.from_numpy(crops), finding_embeddings).numpy()

    return CroppedLevels(normalised_channels(t2, t1), grid, classifier.cfg.crop, scored_labels(ontology), classify)
