"""Contrastive pretraining of the text encoder: CLIP-style on (study, report) pairs, or SimCSE on text alone.

CLIP here is locked-image tuning (LiT, Zhai et al. 2022): the image tower is the ConvNeXt V2 encoder,
frozen (FCMAE-pretrained with ``--init-image``, else random), whose multi-scale pooled slice features
are computed once; a small trainable head maps them into the shared space. The text tower (the
transformer and its projection, the same ``TextEncoder`` the fine-tuning model uses) learns to put a
report next to its own study. With 2 CPU cores, freezing the image side is what makes this affordable.

SimCSE (Gao et al. 2021) needs no images: each report is encoded twice under different dropout and the
two views are the positive pair. Either way the 24 category terms are embedded before and after, and
their similarity matrix goes into a PNG with the neighbourhood checks of ``similarity.py``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from model_export.model.text_encoder import TextEncoder, load_backbone, load_tokenizer, tokenize
from model_export.pretrain.figures import plot_loss, plot_similarity
from model_export.pretrain.init import TEXT_KIND
from model_export.pretrain.similarity import category_embeddings, neighbourhood, similarity_matrix
from service.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextPretrainConfig:
    objective: str = "clip"
    """"clip" (study, report) pairs, or "simcse" (reports alone)."""
    text_model: str | None = None
    """A local Hugging Face model directory; None = packaged all-MiniLM-L6-v2; "tiny-random" for tests."""
    embed_dim: int = 256
    encoder: str = "atto"
    input_size: int = 160
    max_length: int = 128
    steps: int = 300
    time_budget_s: float | None = None
    batch_size: int = 16
    lr_backbone: float = 2e-5
    lr_heads: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    temperature: float = 0.07
    simcse_temperature: float = 0.05
    slices_per_study: int = 5
    seed: int = 0
    checkpoint_every: int = 50
    threads: int = 2


class ImageHead(nn.Module):
    """Frozen pooled image features -> the shared space."""

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, 2 * embed_dim), nn.GELU(),
                                 nn.Linear(2 * embed_dim, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


@torch.no_grad()
def study_features(backbone: nn.Module, studies: list, size: int, slices: int) -> list[torch.Tensor]:
    """Per study, (slices, D) concatenated global means of the four stage outputs of central slices."""
    from service.infer.model import model_input

    backbone.eval()
    out = []
    for study in studies:
        x = model_input(study.t2, study.t1, (size, size))
        n = x.shape[0]
        start = max(0, n // 2 - slices // 2)
        x = torch.from_numpy(x[start:start + slices])
        hidden = backbone(pixel_values=x, output_hidden_states=True).hidden_states[1:]
        out.append(torch.cat([h.mean(dim=(2, 3)) for h in hidden], dim=1))
    return out


def info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: row i of a matches row i of b."""
    logits = scale * a @ b.T
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _text_model_dir(cfg: TextPretrainConfig, out_dir: Path) -> Path:
    from model_export.configs import ModelConfig
    from model_export.model.network import resolve_text_model_dir

    return resolve_text_model_dir(ModelConfig(text_model=cfg.text_model), out_dir)


def _image_backbone(cfg: TextPretrainConfig, init_image: Path | None) -> nn.Module:
    from transformers import ConvNextV2Model

    from model_export.model.image_encoder import convnext_v2_config
    from model_export.pretrain.init import IMAGE_KIND, read_pretrained

    backbone = ConvNextV2Model(convnext_v2_config(cfg.encoder, in_channels=2))
    if init_image is not None:
        ckpt = read_pretrained(init_image, IMAGE_KIND)
        try:
            backbone.load_state_dict(ckpt["backbone"])
        except RuntimeError as exc:
            raise ConfigError(f"--init-image {init_image} is not a {cfg.encoder} encoder") from exc
    return backbone.requires_grad_(False)


def pretrain_text(data_dir: Path | None, cfg: TextPretrainConfig, out_dir: Path, reports_file: Path | None = None,
                  init_image: Path | None = None, progress: bool = True) -> Path:
    """Pretrain the text encoder; writes text_encoder.pt, text_model/, similarity.png and .json, curves.png."""
    from model_export.pretrain.reports import collect_reports, match_reports
    from model_export.pretrain.unlabelled import discover_unlabelled, iter_unlabelled

    if cfg.objective not in ("clip", "simcse"):
        raise ConfigError(f"unknown objective {cfg.objective!r}; choose clip or simcse")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    text_dir = _text_model_dir(cfg, out_dir)
    tokenizer = load_tokenizer(text_dir)
    encoder = TextEncoder(load_backbone(text_dir), cfg.embed_dim)
    max_length = min(cfg.max_length, int(getattr(encoder.backbone.config, "max_position_embeddings", 512)))
    names, before = category_embeddings(encoder, tokenizer)

    features: list[torch.Tensor] = []
    if cfg.objective == "clip":
        if data_dir is None:
            raise ConfigError("CLIP pretraining needs --data with studies; use --text-only for reports alone")
        found = discover_unlabelled(data_dir)
        reports = match_reports([n for n, _ in found.loaders], found.study_uids, data_dir, reports_file)
        backbone = _image_backbone(cfg, init_image)
        skipped: list = []
        texts, keys = [], []
        for study in iter_unlabelled(data_dir, skipped, names=set(reports), found=found):
            features += study_features(backbone, [study], cfg.input_size, cfg.slices_per_study)
            texts.append(reports[study.name])
            keys.append(study.name)
        if len(texts) < 2:
            raise ConfigError(f"CLIP pretraining needs at least 2 readable studies with reports in {data_dir}, "
                              f"found {len(texts)}; use --text-only for reports without images")
    else:
        collected = collect_reports(data_dir, reports_file)
        texts, keys = [r.text for r in collected], [r.key for r in collected]
        if len(texts) < 2:
            raise ConfigError("SimCSE pretraining needs at least 2 reports")
    log.info("%s pretraining on %d reports", cfg.objective, len(texts))

    head = ImageHead(features[0].shape[1], cfg.embed_dim) if features else None
    log_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))
    heads = list(encoder.projection.parameters()) + ([log_scale] + list(head.parameters()) if head else [])
    optimizer = torch.optim.AdamW([{"params": encoder.backbone.parameters(), "lr": cfg.lr_backbone},
                                   {"params": heads, "lr": cfg.lr_heads}], weight_decay=cfg.weight_decay)
    base_lrs = [cfg.lr_backbone, cfg.lr_heads]
    generator = torch.Generator().manual_seed(cfg.seed)
    state: dict[str, Any] = {"step": 0, "history": [], "elapsed_s": 0.0}
    batch_size = min(cfg.batch_size, len(texts))
    started = time.perf_counter()
    bar = tqdm(total=cfg.steps, disable=not progress, desc=f"pretrain text ({cfg.objective})")
    encoder.train()
    while state["step"] < cfg.steps:
        step = state["step"]
        factor = min(1.0, (step + 1) / max(1, cfg.warmup_steps)) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * factor
        idx = torch.randperm(len(texts), generator=generator)[:batch_size].tolist()
        ids, mask = tokenize(tokenizer, [texts[i] for i in idx], max_length)
        if head is not None:
            picked = []
            for i in idx:  # a random subset of the study's slices: a cheap augmentation
                f = features[i]
                keep = torch.rand(len(f), generator=generator) < 0.7
                picked.append(f[keep].mean(0) if keep.any() else f.mean(0))
            loss = info_nce(head(torch.stack(picked)), encoder(ids, mask), log_scale.exp().clamp(max=100.0))
        else:
            loss = info_nce(encoder(ids, mask), encoder(ids, mask), torch.tensor(1.0 / cfg.simcse_temperature))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(encoder.parameters()) + heads, 1.0)
        optimizer.step()
        state["step"] = step + 1
        state["elapsed_s"] = time.perf_counter() - started
        state["history"].append({"step": step + 1, "loss": float(loss.detach()),
                                 "elapsed_s": round(state["elapsed_s"], 2)})
        bar.update(1)
        bar.set_postfix(loss=f"{state['history'][-1]['loss']:.3f}")
        if cfg.time_budget_s is not None and state["elapsed_s"] >= cfg.time_budget_s:
            log.info("time budget of %.0f s reached at step %d", cfg.time_budget_s, state["step"])
            break
    bar.close()

    _, after = category_embeddings(encoder, tokenizer)
    matrices = {"before": similarity_matrix(before), "after": similarity_matrix(after)}
    checks = {k: neighbourhood(m) for k, m in matrices.items()}
    plot_similarity(names, {f"{k}: triplet accuracy {checks[k]['triplet_accuracy']:.2f}": m
                            for k, m in matrices.items()}, out_dir / "similarity.png",
                    f"category term similarity, {cfg.objective} pretraining ({state['step']} steps)")
    (out_dir / "similarity.json").write_text(json.dumps(
        {"names": names, "matrices": {k: m.tolist() for k, m in matrices.items()}, "neighbourhood": checks},
        indent=1))
    plot_loss(state["history"], out_dir / "curves.png", ("loss",), f"text pretraining ({cfg.objective})")
    (out_dir / "history.json").write_text(json.dumps(state["history"]))
    hf_dir = out_dir / "text_model"
    encoder.backbone.save_pretrained(str(hf_dir))
    (hf_dir / "tokenizer.json").write_text(tokenizer.to_str())
    path = out_dir / "text_encoder.pt"
    ckpt = {"kind": TEXT_KIND, "objective": cfg.objective, "config": asdict(cfg), "embed_dim": cfg.embed_dim,
            "text_encoder": encoder.state_dict(), "image_head": head.state_dict() if head else None,
            "text_state": {"config": encoder.backbone.config.to_dict(), "tokenizer_json": tokenizer.to_str()},
            "state": state, "neighbourhood": checks,
            "provenance": {"data_dir": str(data_dir), "reports": len(texts), "keys": keys,
                           "init_image": None if init_image is None else str(init_image),
                           "text_model": str(text_dir), "steps": state["step"],
                           "wall_time_s": round(state["elapsed_s"], 1)}}
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, str(tmp))
    tmp.replace(path)
    return path
