"""ConvNeXt V2 image encoder with a U-Net/FPN decoder to stride 2.

The backbone is transformers' ``ConvNextV2Model`` built from a config (never downloaded), with two input
channels: T2 and T1 resampled onto the T2 grid. Its patchify stem has stride 4; intervertebral discs on a
model-size slice are only a few pixels tall, so a light stride-2 convolution branch from the input joins
the decoder and the features come out at stride 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ConvNextV2Config, ConvNextV2Model

# (depths, hidden sizes) of the ConvNeXt V2 family (Woo et al. 2023, table 1)
CONVNEXT_V2_SIZES: dict[str, tuple[list[int], list[int]]] = {
    "pico-mini": ([1, 1, 2, 1], [16, 32, 64, 128]),  # not in the paper: for tests that must run in seconds
    "atto": ([2, 2, 6, 2], [40, 80, 160, 320]),
    "femto": ([2, 2, 6, 2], [48, 96, 192, 384]),
    "pico": ([2, 2, 6, 2], [64, 128, 256, 512]),
    "nano": ([2, 2, 8, 2], [80, 160, 320, 640]),
    "tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
}


def convnext_v2_config(size: str, in_channels: int = 2, drop_path: float = 0.0) -> ConvNextV2Config:
    if size not in CONVNEXT_V2_SIZES:
        raise ValueError(f"unknown ConvNeXt V2 size {size!r}; choose from {sorted(CONVNEXT_V2_SIZES)}")
    depths, dims = CONVNEXT_V2_SIZES[size]
    return ConvNextV2Config(num_channels=in_channels, depths=depths, hidden_sizes=dims,
                            drop_path_rate=drop_path)


class ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(min(8, cout), cout), nn.GELU())


class FPNDecoder(nn.Module):
    """Top-down pathway: lateral 1x1 projections, upsample-and-add, a 3x3 smoothing conv per level."""

    def __init__(self, in_dims: list[int], width: int, stem_width: int, out_dim: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(d, width, 1) for d in in_dims)
        self.smooth = nn.ModuleList(ConvNormAct(width, width) for _ in in_dims)
        self.fuse_stride2 = ConvNormAct(width + stem_width, out_dim)

    def forward(self, stages: list[torch.Tensor], stride2: torch.Tensor) -> torch.Tensor:
        x = self.smooth[-1](self.laterals[-1](stages[-1]))
        for i in range(len(stages) - 2, -1, -1):
            lateral = self.laterals[i](stages[i])
            x = F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=False) + lateral
            x = self.smooth[i](x)
        x = F.interpolate(x, size=stride2.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse_stride2(torch.cat([x, stride2], dim=1))


class ImageEncoder(nn.Module):
    """(B, 2, S, S) -> features (B, out_dim, S/2, S/2) and pooled (B, pooled_dim) from the deepest stage."""

    def __init__(self, size: str = "atto", in_channels: int = 2, decoder_width: int = 64,
                 out_dim: int = 32, stem_width: int = 16, drop_path: float = 0.0) -> None:
        super().__init__()
        self.backbone = ConvNextV2Model(convnext_v2_config(size, in_channels, drop_path))
        dims = CONVNEXT_V2_SIZES[size][1]
        self.stride2 = nn.Sequential(ConvNormAct(in_channels, stem_width, stride=2),
                                     ConvNormAct(stem_width, stem_width))
        self.decoder = FPNDecoder(dims, decoder_width, stem_width, out_dim)
        self.pooled_dim = dims[-1]
        self.out_dim = out_dim

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.backbone(pixel_values=image, output_hidden_states=True)
        stages = list(out.hidden_states[1:])  # the four stage outputs, strides 4, 8, 16, 32
        features = self.decoder(stages, self.stride2(image))
        pooled = stages[-1].mean(dim=(2, 3))
        return features, pooled
