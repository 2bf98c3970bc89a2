"""The text-guided segmenter, its visual-only variant, and building any model from a checkpoint.

Both variants share the image encoder and the fusion head; they differ only in where the class and
finding embeddings come from: the text encoder on the ontology's prompts, or learned vectors. That makes
the visual-only variant the ablation of text guidance under the same data and budget.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model_export.configs import TINY_TEXT_MODEL, ModelConfig, RunConfig
from model_export.model.fusion import FusionHead, finding_sums, widen_masks
from model_export.model.image_encoder import ImageEncoder
from model_export.model.text_encoder import (
    TextEncoder,
    default_text_model_dir,
    load_backbone,
    load_tokenizer,
    tokenize,
    write_tiny_text_model,
)
from service.ontology import Ontology

CHECKPOINT_FORMAT = 2
"""2: U-Net decoder to full resolution and the two-scale fusion head. 1 (no "format" key): FPN to stride 2."""


def prompt_groups(ontology: Ontology) -> list[list[str]]:
    """Structures first (label order), then findings (ontology order): one list of prompts per class."""
    return [s.prompt_texts() for s in ontology.structures] + [f.prompt_texts() for f in ontology.findings]


class LumbarSegmenter(nn.Module):
    """Image encoder + fusion head, guided by text embeddings (or by learned embeddings when visual-only)."""

    def __init__(self, cfg: ModelConfig, ontology: Ontology, text_backbone: nn.Module | None = None,
                 tokenizer: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_structures = len(ontology.structures)
        self.num_findings = len(ontology.findings)
        self.image_encoder = ImageEncoder(cfg.encoder, 2, cfg.decoder_width, cfg.feat_dim)
        self.fusion = FusionHead(cfg.feat_dim, cfg.embed_dim, self.image_encoder.pooled_dim,
                                 center_embeddings=cfg.center_class_embeddings,
                                 pool_dilation=cfg.finding_pool_dilation,
                                 finding_conv_layers=cfg.finding_conv_layers)
        self.text_guided = cfg.kind == "text_guided"
        if self.text_guided:
            if text_backbone is None or tokenizer is None:
                raise ValueError("the text-guided model needs a text backbone and its tokenizer")
            self.text_encoder = TextEncoder(text_backbone, cfg.embed_dim)
            self.tokenizer_json = tokenizer.to_str()
            self.text_encoder.backbone.requires_grad_(cfg.train_text_backbone)
            groups = prompt_groups(ontology)
            texts = [t for g in groups for t in g]
            ids, mask = tokenize(tokenizer, texts, cfg.text_max_length)
            self.register_buffer("prompt_ids", ids, persistent=False)
            self.register_buffer("prompt_mask", mask, persistent=False)
            self.register_buffer("prompt_group", torch.tensor([i for i, g in enumerate(groups) for _ in g]),
                                 persistent=False)
            self._frozen_sentences: torch.Tensor | None = None
        else:
            n = self.num_structures + self.num_findings
            self.learned_embeddings = nn.Parameter(torch.randn(n, cfg.embed_dim) / cfg.embed_dim ** 0.5)

    def class_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, E) structure and (F, E) finding embeddings, L2-normalised."""
        if self.text_guided:
            sentences = self._sentence_features()
            prompts = self.text_encoder.project(sentences)
            n = self.num_structures + self.num_findings
            sums = torch.zeros(n, prompts.shape[1], dtype=prompts.dtype).index_add(0, self.prompt_group, prompts)
            emb = F.normalize(sums, dim=-1)
        else:
            emb = F.normalize(self.learned_embeddings, dim=-1)
        return emb[: self.num_structures], emb[self.num_structures:]

    def _sentence_features(self) -> torch.Tensor:
        if self.cfg.train_text_backbone:
            return self.text_encoder.sentence_features(self.prompt_ids, self.prompt_mask)
        if self._frozen_sentences is None:  # a frozen backbone gives the same answer every step
            with torch.no_grad():
                self._frozen_sentences = self.text_encoder.sentence_features(self.prompt_ids, self.prompt_mask)
        return self._frozen_sentences

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        features, pooled = self.image_encoder(image)
        structures, findings = self.class_embeddings()
        low = self.fusion.segment(features, pooled, structures)
        return {
            "logits": low,  # the decoder ends at full resolution
            "finding_pixel_logits": self.fusion.finding_logits(features, findings),
        }

    def train(self, mode: bool = True) -> LumbarSegmenter:
        super().train(mode)
        if self.text_guided and not self.cfg.train_text_backbone:
            self.text_encoder.backbone.eval()  # frozen: no dropout, so the cached features stay valid
        return self


class FusionExport(nn.Module):
    """The fusion head as served: label map on the caller's grid, per-slice finding sums and finding maps.

    The sums pool findings inside the model's own classes (widened as in training); the per-pixel finding logits let the worker
    pool them again inside the structures it delivers (service.infer.finding_maps).

    ``output_grid`` only carries the (rows, cols) of the original slices in its shape, so that the
    upsampling to the acquisition grid and the argmax run inside the graph.
    """

    def __init__(self, fusion: FusionHead) -> None:
        super().__init__()
        self.fusion = fusion

    def forward(self, features: torch.Tensor, pooled: torch.Tensor, structure_embeddings: torch.Tensor,
                finding_embeddings: torch.Tensor, output_grid: torch.Tensor):
        low = self.fusion.segment(features, pooled, structure_embeddings)
        shifted = torch.exp(low - low.amax(dim=1, keepdim=True))  # softmax written out: ONNX Runtime's
        probs = (shifted / shifted.sum(dim=1, keepdim=True))[:, 1:]  # Softmax over axis 1 was 3x slower
        finding_logits = self.fusion.finding_logits(features, finding_embeddings)
        class_mass, finding_mass = finding_sums(finding_logits, widen_masks(probs, self.fusion.pool_dilation))
        up = F.interpolate(low, size=output_grid.shape[-2:], mode="bilinear", align_corners=False)
        labels = torch.argmax(up, dim=1).to(torch.uint8)
        return labels, class_mass, finding_mass, low, finding_logits


def build_model(run: RunConfig, ontology: Ontology, work_dir: Path | None = None,
                text_state: dict[str, Any] | None = None) -> nn.Module:
    """A fresh model for ``run``; ``text_state`` (from a checkpoint) rebuilds the text backbone offline."""
    cfg = run.model
    if cfg.kind == "unet":
        from model_export.model.baselines import UNetBaseline

        return UNetBaseline(len(ontology.structures) + 1, cfg.unet_filters)
    if cfg.kind == "visual_only":
        return LumbarSegmenter(cfg, ontology)
    if text_state is not None:
        backbone, tokenizer = backbone_from_state(text_state)
    else:
        text_dir = resolve_text_model_dir(cfg, work_dir)
        backbone, tokenizer = load_backbone(text_dir), load_tokenizer(text_dir)
    return LumbarSegmenter(cfg, ontology, backbone, tokenizer)


def resolve_text_model_dir(cfg: ModelConfig, work_dir: Path | None) -> Path:
    if cfg.text_model is None:
        return default_text_model_dir()
    if cfg.text_model == TINY_TEXT_MODEL:
        target = Path(work_dir or ".") / "tiny_text_model"
        if not (target / "config.json").is_file():
            write_tiny_text_model(target)
        return target
    return Path(cfg.text_model)


def text_state_of(model: nn.Module) -> dict[str, Any] | None:
    """What a checkpoint needs to rebuild the text backbone without the original directory."""
    if not isinstance(model, LumbarSegmenter) or not model.text_guided:
        return None
    return {"config": model.text_encoder.backbone.config.to_dict(), "tokenizer_json": model.tokenizer_json}


def backbone_from_state(state: dict[str, Any]):
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModel

    config_dict = dict(state["config"])
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    return AutoModel.from_config(config), Tokenizer.from_str(state["tokenizer_json"])


def load_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Model (eval mode) and the checkpoint dict (run config, ontology, thresholds, history...)."""
    from service.errors import ConfigError

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"cannot read checkpoint {path}: {exc}") from exc
    if ckpt.get("format", 1) != CHECKPOINT_FORMAT:
        raise ConfigError(f"checkpoint {path} has format {ckpt.get('format', 1)}, this version reads format "
                          f"{CHECKPOINT_FORMAT} (format 1 was the stride-2 FPN decoder); retrain it with "
                          "lumbar-ai train")
    run = RunConfig.from_dict(ckpt["run"])
    ontology = Ontology.from_dict(ckpt["ontology"])
    model = build_model(run, ontology, text_state=ckpt.get("text_state"))
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt


def describe(model: nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    return json.dumps({"class": type(model).__name__, "parameters": n})
