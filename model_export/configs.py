"""Named configurations: the model (architecture, input size) and the training run (budget, losses).

``tiny`` runs in seconds for the tests, ``demo`` fits the 15-minute CPU budget of ``make demo``,
``cpu-hour`` is one CPU-hour on one core, its steps set by the budget (models compared under it train
side by side, each on one thread), and
``default`` is for a GPU-sized run. Every field can be read back from a checkpoint, which stores both dicts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from service.infer.input_view import InputView

ModelKind = Literal["text_guided", "visual_only", "unet"]
TINY_TEXT_MODEL = "tiny-random"
"""``text_model`` value meaning: a 1-layer random BERT with MiniLM's tokenizer (tests only)."""


@dataclass(frozen=True)
class ModelConfig:
    kind: ModelKind = "text_guided"
    encoder: str = "atto"
    input_size: int = 160
    decoder_width: int = 128
    """Channels of the U-Net decoder at stride 16, halving per scale."""
    feat_dim: int = 16
    """Channels of the features the fusion head reads."""
    embed_dim: int = 256
    text_model: str | None = None
    """A local Hugging Face model directory; None means the packaged all-MiniLM-L6-v2."""
    text_max_length: int = 32
    train_text_backbone: bool = False
    center_class_embeddings: bool = True
    """Subtract the mean structure embedding before the fusion head's controller (see model.fusion)."""
    unet_filters: tuple[int, ...] = (16, 32, 64, 128, 256)
    band_size: tuple[int, int] | None = None
    """(height, width) of the spine band view, or None for the square view alone (service.infer.input_view)."""
    band_margin: float = 0.06
    """Margin on either side of the spine band, as a fraction of the slice height."""
    finding_conv_layers: int = 0
    """3x3 convolutions (at stride 2) before the finding projection; 0: a per-pixel linear projection of the
    fusion features, as every checkpoint before it had (see model.fusion)."""
    finding_pool_dilation: int = 0
    """Feature pixels by which each structure's mask is widened before its finding logits are pooled, in
    training (true masks) and serving (delivered masks); see service.infer.finding_maps."""

    def view(self) -> InputView:
        return InputView((self.input_size, self.input_size), self.band_size, self.band_margin)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    time_budget_s: float | None = None
    """Stop early after this many seconds of training on ``threads`` dedicated cores (process CPU time /
    threads; see training.loop.budget_seconds): the demo's CPU budget, immune to other load."""
    lr: float = 2e-3
    weight_decay: float = 0.02
    warmup_steps: int = 50
    slices_per_step: int = 8
    sequence_dropout: float = 0.25
    """Probability of blanking T2, and separately of blanking T1 (never both)."""
    finding_loss_weight: float = 0.5
    survey_fraction: float = 0.3
    """With a spine band view: the share of steps that show the square survey view instead of the band."""
    augment: bool = True
    real_share: float = 0.0
    """With real labelled cases beside the generated ones: the share of steps drawn from the real cases."""
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    validation_cases: int = 4
    threads: int = 2


@dataclass(frozen=True)
class RunConfig:
    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": asdict(self.model), "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        model = dict(data["model"])
        model["unet_filters"] = tuple(model.get("unet_filters", ModelConfig.unet_filters))
        if model.get("band_size") is not None:
            model["band_size"] = tuple(model["band_size"])
        model.setdefault("center_class_embeddings", False)  # checkpoints from before centring
        return cls(name=data["name"], model=ModelConfig(**model), train=TrainConfig(**data["train"]))

    def with_kind(self, kind: ModelKind) -> RunConfig:
        return replace(self, model=replace(self.model, kind=kind))


CONFIGS: dict[str, RunConfig] = {
    "tiny": RunConfig(
        "tiny",
        ModelConfig(encoder="pico-mini", input_size=64, decoder_width=16, feat_dim=16, embed_dim=32,
                    text_model=TINY_TEXT_MODEL, unet_filters=(8, 16, 32, 64)),
        TrainConfig(steps=8, lr=3e-3, warmup_steps=0, slices_per_step=4, log_every=2, checkpoint_every=4,
                    validation_cases=1, augment=False),
    ),
    "demo": RunConfig(
        "demo",
        ModelConfig(encoder="atto", input_size=160),
        TrainConfig(steps=1200, time_budget_s=660.0, lr=1e-3, warmup_steps=100, slices_per_step=6,
                    checkpoint_every=100),
    ),
    "cpu-hour": RunConfig(
        "cpu-hour",
        ModelConfig(encoder="atto", input_size=160),
        TrainConfig(steps=50_000, time_budget_s=3600.0, lr=1e-3, warmup_steps=100, slices_per_step=6,
                    checkpoint_every=500, threads=1),
    ),
    "default": RunConfig(
        "default",
        ModelConfig(encoder="femto", input_size=256),
        TrainConfig(steps=20000, slices_per_step=12, checkpoint_every=500),
    ),
}


def get_config(name: str) -> RunConfig:
    if name not in CONFIGS:
        raise KeyError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
    return CONFIGS[name]
