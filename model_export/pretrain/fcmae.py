"""FCMAE (Woo et al. 2023) for transformers' ConvNextV2Model, with dense masking instead of sparse convs.

The paper treats the visible patches as a sparse point set. Without a sparse convolution library the same
computation is done densely: masked positions are set to zero at the stem output and before and after
every depthwise convolution (so a visible position never reads a masked one), and GRN takes its global
statistics over visible positions only. The masked forward below calls the very modules of a
``ConvNextV2Model`` (embeddings, each stage's downsampling layer, and each layer's dwconv, layernorm,
pwconv1, act, grn weights, pwconv2, drop_path), so its state dict loads straight into the fine-tuning
model's ``image_encoder.backbone``.

The mask lives on the grid of the last stage: with the stem's stride 4 and three 2x downsamplings one
cell is a 32x32 pixel patch, the paper's default, and every 2x2 downsampling window is either wholly
visible or wholly masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ConvNextV2Model
from transformers.models.convnextv2.modeling_convnextv2 import ConvNextV2Layer

PATCH_SIZE = 32
"""Mask patch in input pixels: the total stride of ConvNeXt V2, one cell of the last stage."""


def random_mask(batch: int, grid: tuple[int, int], ratio: float, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """(B, h, w) bool, True = masked; exactly round(ratio * h * w) cells per sample, at least one visible."""
    cells = grid[0] * grid[1]
    n_masked = min(cells - 1, int(round(ratio * cells)))
    noise = torch.rand(batch, cells, generator=generator)
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return (ranks < n_masked).reshape(batch, *grid)


def visible_at(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) bool: the patch mask upsampled (nearest) to a feature map's grid, True = visible."""
    up = F.interpolate((~mask)[:, None].float(), size=size, mode="nearest")
    return up > 0.5


def _zero_masked(x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    # where, not a product: a NaN or inf under the mask must not survive as 0 * inf
    return torch.where(visible, x, torch.zeros((), dtype=x.dtype))


def masked_grn(grn: nn.Module, x: torch.Tensor, visible_nhwc: torch.Tensor) -> torch.Tensor:
    """ConvNextV2GRN on (B, H, W, C) with the L2 norm over visible positions only (the sparse GRN)."""
    gx = torch.linalg.vector_norm(_zero_masked(x, visible_nhwc), ord=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    return grn.weight * (x * nx) + grn.bias + x


def masked_layer(layer: ConvNextV2Layer, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """One ConvNeXt V2 block as in ``ConvNextV2Layer.forward``, with masked positions held at zero."""
    residual = x
    h = layer.dwconv(_zero_masked(x, visible))
    h = _zero_masked(h, visible).permute(0, 2, 3, 1)
    h = layer.act(layer.pwconv1(layer.layernorm(h)))
    h = masked_grn(layer.grn, h, visible.permute(0, 2, 3, 1))
    h = layer.pwconv2(h).permute(0, 3, 1, 2)
    return _zero_masked(residual + layer.drop_path(h), visible)


def masked_encoder_forward(backbone: ConvNextV2Model, pixels: torch.Tensor, mask: torch.Tensor
                           ) -> list[torch.Tensor]:
    """The four stage outputs of ``backbone`` on ``pixels`` (B, C, H, W) with ``mask`` (B, H/32, W/32).

    Masked positions are exactly zero in every output; visible positions depend on visible pixels only.
    With an all-False mask this equals ``backbone(pixels, output_hidden_states=True).hidden_states[1:]``.
    """
    rows, cols = pixels.shape[-2:]
    if rows % PATCH_SIZE or cols % PATCH_SIZE:
        raise ValueError(f"image size {rows}x{cols} must be a multiple of the {PATCH_SIZE}-pixel patch")
    if mask.shape != (pixels.shape[0], rows // PATCH_SIZE, cols // PATCH_SIZE):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the patch grid of {tuple(pixels.shape)}")
    x = backbone.embeddings.layernorm(backbone.embeddings.patch_embeddings(pixels))
    x = _zero_masked(x, visible_at(mask, x.shape[-2:]))
    stages = []
    for stage in backbone.encoder.stages:
        for module in stage.downsampling_layer:
            x = module(x)
        visible = visible_at(mask, x.shape[-2:])
        x = _zero_masked(x, visible)
        for layer in stage.layers:
            x = masked_layer(layer, x, visible)
        stages.append(x)
    return stages


def patchify(pixels: torch.Tensor, patch: int = PATCH_SIZE) -> torch.Tensor:
    """(B, C, H, W) -> (B, h, w, C, patch * patch)."""
    b, c, rows, cols = pixels.shape
    x = pixels.reshape(b, c, rows // patch, patch, cols // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, rows // patch, cols // patch, c, patch * patch)


def unpatchify(patches: torch.Tensor, patch: int = PATCH_SIZE) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b, h, w, c, _ = patches.shape
    x = patches.reshape(b, h, w, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h * patch, w * patch)


class FCMAE(nn.Module):
    """Masked encoder (a ConvNextV2Model) + a light decoder predicting each masked patch's pixels.

    The decoder is the paper's: a 1x1 projection, a learned mask token at masked cells, ConvNeXt V2
    blocks, and a 1x1 prediction of patch * patch * channels values per cell.
    """

    def __init__(self, backbone: ConvNextV2Model, decoder_dim: int = 128, decoder_depth: int = 1,
                 mask_ratio: float = 0.6) -> None:
        super().__init__()
        self.backbone = backbone
        self.in_channels = backbone.config.num_channels
        self.mask_ratio = mask_ratio
        self.proj = nn.Conv2d(backbone.config.hidden_sizes[-1], decoder_dim, 1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = nn.ModuleList(ConvNextV2Layer(backbone.config, dim=decoder_dim) for _ in range(decoder_depth))
        self.pred = nn.Conv2d(decoder_dim, PATCH_SIZE * PATCH_SIZE * self.in_channels, 1)

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predicted patches (B, h, w, C, 32 * 32) in per-patch normalised units."""
        deepest = masked_encoder_forward(self.backbone, pixels, mask)[-1]
        x = self.proj(deepest)
        x = torch.where(mask[:, None], self.mask_token.to(x.dtype), x)
        for layer in self.decoder:
            x = layer(x)
        pred = self.pred(x)  # (B, p*p*C, h, w)
        b, _, h, w = pred.shape
        return pred.permute(0, 2, 3, 1).reshape(b, h, w, self.in_channels, PATCH_SIZE * PATCH_SIZE)


def normalised_targets(pixels: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-patch, per-channel normalised pixels (the paper's norm_pix_loss) and the mean and std used."""
    target = patchify(pixels)
    mean = target.mean(dim=-1, keepdim=True)
    std = (target.var(dim=-1, keepdim=True, unbiased=False) + eps).sqrt()
    return (target - mean) / std, mean, std


def fcmae_loss(pred: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor,
               channel_present: torch.Tensor | None = None) -> torch.Tensor:
    """MSE over masked patches (and channels the slice has) against per-patch normalised pixels.

    ``channel_present`` (B, C) bool leaves a missing sequence (a channel of zeros) out of the loss.
    """
    target, _, _ = normalised_targets(pixels)
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, h, w, C)
    weight = mask[..., None].to(per_patch.dtype)
    if channel_present is not None:
        weight = weight * channel_present[:, None, None, :].to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp(min=1.0)


def reconstruct(pred: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Image with masked patches replaced by the prediction, de-normalised with each patch's own statistics."""
    _, mean, std = normalised_targets(pixels)
    patches = torch.where(mask[..., None, None], pred * std + mean, patchify(pixels))
    return unpatchify(patches)
