"""FCMAE pretraining of the ConvNeXt V2 image encoder on unlabelled studies: seeded, budgeted, resumable.

Slices are prepared exactly as fine-tuning and serving prepare them (``service.infer.model.model_input``:
[T2, T1] channels, percentile scaling, antialiased resize), so the encoder learns the statistics it will
be fine-tuned and served on. A study without one of the sequences contributes a zero channel that is left
out of the loss. The checkpoint's ``backbone`` entry is a ``ConvNextV2Model`` state dict that
``lumbar-ai train --init-image`` loads into the model's image encoder.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from model_export.pretrain.fcmae import FCMAE, PATCH_SIZE, fcmae_loss, random_mask, reconstruct
from model_export.pretrain.figures import plot_loss, plot_reconstructions
from model_export.pretrain.init import IMAGE_KIND as CHECKPOINT_KIND
from model_export.pretrain.unlabelled import Skipped, UnlabelledStudy, iter_unlabelled
from service.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImagePretrainConfig:
    encoder: str = "atto"
    input_size: int = 160
    """Must match the fine-tuning config's input size and be a multiple of the 32-pixel patch."""
    mask_ratio: float = 0.6
    decoder_dim: int = 128
    decoder_depth: int = 1
    steps: int = 2000
    time_budget_s: float | None = None
    batch_size: int = 8
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    warmup_steps: int = 40
    central_fraction: float = 0.7
    """Slices are drawn from this central share of each series: the spine lies mid-sagittal."""
    seed: int = 0
    checkpoint_every: int = 100
    preview_every: int = 100
    threads: int = 2


@dataclass
class PreparedSlices:
    images: torch.Tensor
    """(N, 2, S, S) float16: the central slices of every study, [T2, T1]."""
    present: torch.Tensor
    """(N, 2) bool: which sequences each slice has."""
    study_of: list[str]


def prepare_slices(studies: Iterable[UnlabelledStudy], size: int, central_fraction: float) -> PreparedSlices:
    """Model-size central slices of each study, read one study at a time."""
    from service.infer.model import model_input

    images, present, study_of = [], [], []
    for study in studies:
        x = model_input(study.t2, study.t1, (size, size))
        n = x.shape[0]
        keep = max(1, int(round(n * central_fraction)))
        start = (n - keep) // 2
        images.append(torch.from_numpy(x[start:start + keep]).to(torch.float16))
        flags = torch.tensor([study.t2 is not None, study.t1 is not None])
        present.append(flags.expand(keep, 2))
        study_of += [study.name] * keep
    if not images:
        return PreparedSlices(torch.zeros(0, 2, size, size, dtype=torch.float16), torch.zeros(0, 2, dtype=torch.bool), [])
    return PreparedSlices(torch.cat(images), torch.cat(present), study_of)


def lr_at(step: int, cfg: ImagePretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_fcmae(cfg: ImagePretrainConfig) -> FCMAE:
    from transformers import ConvNextV2Model

    from model_export.model.image_encoder import convnext_v2_config

    return FCMAE(ConvNextV2Model(convnext_v2_config(cfg.encoder, in_channels=2)), cfg.decoder_dim,
                 cfg.decoder_depth, cfg.mask_ratio)


def _preview(model: FCMAE, batch: torch.Tensor, mask: torch.Tensor, present: torch.Tensor, path: Path,
             title: str) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(batch, mask)
        loss = float(fcmae_loss(pred, batch, mask, present))
        recon = reconstruct(pred, batch, mask)
    model.train()
    channel = [0 if bool(p[0]) else 1 for p in present]
    pick = torch.arange(len(batch))
    plot_reconstructions(batch[pick, channel].numpy(), mask.numpy(), recon[pick, channel].numpy(), path,
                         f"{title}; masked-patch loss {loss:.3f}")
    return loss


def pretrain_image(data_dir: Path, cfg: ImagePretrainConfig, out_dir: Path, resume: bool = False,
                   max_studies: int | None = None, progress: bool = True) -> Path:
    """Pretrain on every readable study under ``data_dir``; returns the path of the final checkpoint."""
    if cfg.input_size % PATCH_SIZE:
        raise ConfigError(f"input size {cfg.input_size} must be a multiple of the {PATCH_SIZE}-pixel patch")
    if not 0.0 < cfg.mask_ratio < 1.0:
        raise ConfigError(f"mask ratio must lie in (0, 1), got {cfg.mask_ratio}")
    out_dir = Path(out_dir)
    (out_dir / "reconstructions").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    started_read = time.perf_counter()
    skipped: list[Skipped] = []
    data = prepare_slices(iter_unlabelled(data_dir, skipped, max_studies), cfg.input_size, cfg.central_fraction)
    studies = sorted(set(data.study_of))
    if not studies:
        raise ConfigError(f"no readable studies in {data_dir} ({len(skipped)} files or studies skipped)")
    log.info("read %d studies (%d slices) in %.1f s; %d files or studies skipped", len(studies),
             len(data.images), time.perf_counter() - started_read, len(skipped))
    model = build_fcmae(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.95))
    state: dict[str, Any] = {"step": 0, "history": [], "elapsed_s": 0.0}
    last = out_dir / "last.pt"
    if resume and last.is_file():
        ckpt = torch.load(str(last), map_location="cpu", weights_only=False)
        if ckpt.get("kind") != CHECKPOINT_KIND or ckpt["config"]["encoder"] != cfg.encoder:
            raise ConfigError(f"{last} is not an FCMAE checkpoint of a {cfg.encoder} encoder")
        model.load_state_dict(ckpt["fcmae"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        torch.set_rng_state(ckpt["torch_rng"])
        log.info("resumed from %s at step %d", last, state["step"])
    generator = torch.Generator().manual_seed(cfg.seed + state["step"])
    preview_gen = torch.Generator().manual_seed(cfg.seed + 12345)
    preview_idx = torch.linspace(0, len(data.images) - 1, min(4, len(data.images))).long()
    preview = (data.images[preview_idx].float(),
               random_mask(len(preview_idx), (cfg.input_size // PATCH_SIZE,) * 2, cfg.mask_ratio, preview_gen),
               data.present[preview_idx])
    provenance = {"data_dir": str(data_dir), "studies": studies, "slices": len(data.images),
                  "skipped": [asdict(s) for s in skipped]}
    grid = (cfg.input_size // PATCH_SIZE,) * 2
    started = time.perf_counter() - state["elapsed_s"]
    bar = tqdm(total=cfg.steps, initial=state["step"], disable=not progress, desc="pretrain image (FCMAE)")
    model.train()
    while state["step"] < cfg.steps:
        step = state["step"]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        idx = torch.randint(len(data.images), (cfg.batch_size,), generator=generator)
        batch = data.images[idx].float()
        mask = random_mask(cfg.batch_size, grid, cfg.mask_ratio, generator)
        loss = fcmae_loss(model(batch, mask), batch, mask, data.present[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        optimizer.step()
        state["step"] = step + 1
        state["elapsed_s"] = time.perf_counter() - started
        state["history"].append({"step": step + 1, "loss": float(loss.detach()), "lr": lr_at(step, cfg),
                                 "elapsed_s": round(state["elapsed_s"], 2)})
        bar.update(1)
        bar.set_postfix(loss=f"{state['history'][-1]['loss']:.3f}")
        out_of_time = cfg.time_budget_s is not None and state["elapsed_s"] >= cfg.time_budget_s
        done = out_of_time or state["step"] == cfg.steps
        if state["step"] % cfg.preview_every == 0 or done:
            path = out_dir / "reconstructions" / f"step_{state['step']:06d}.png"
            state["history"][-1]["preview_loss"] = _preview(model, *preview, path, f"FCMAE step {state['step']}")
        if state["step"] % cfg.checkpoint_every == 0 or done:
            _save(last, model, optimizer, state, cfg, provenance)
            plot_loss(state["history"], out_dir / "curves.png", ("loss", "preview_loss"),
                      f"FCMAE pretraining ({cfg.encoder}, mask {cfg.mask_ratio:.0%})")
        if out_of_time:
            log.info("time budget of %.0f s reached at step %d", cfg.time_budget_s, state["step"])
            break
    bar.close()
    final = out_dir / "image_encoder.pt"
    provenance.update(steps=state["step"], wall_time_s=round(state["elapsed_s"], 1))
    _save(final, model, optimizer, state, cfg, provenance, with_optimizer=False)
    (out_dir / "history.json").write_text(json.dumps(state["history"]))
    return final


def _save(path: Path, model: FCMAE, optimizer: torch.optim.Optimizer, state: dict[str, Any],
          cfg: ImagePretrainConfig, provenance: dict[str, Any], with_optimizer: bool = True) -> None:
    ckpt = {"kind": CHECKPOINT_KIND, "config": asdict(cfg), "backbone": model.backbone.state_dict(),
            "backbone_config": model.backbone.config.to_dict(), "fcmae": model.state_dict(), "state": state,
            "torch_rng": torch.get_rng_state(), "provenance": provenance}
    if with_optimizer:
        ckpt["optimizer"] = optimizer.state_dict()
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, str(tmp))
    tmp.replace(path)


def config_with(cfg: ImagePretrainConfig, **changes: Any) -> ImagePretrainConfig:
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})
