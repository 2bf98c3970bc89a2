"""Baseline (b): a plain 2D U-Net with nnU-Net-like settings (MONAI DynUNet).

Instance norm, leaky ReLU, 3x3 kernels, stride-2 downsampling, the same Dice + CE loss; no text and no
finding head, so it is compared on segmentation only. Baseline (a), the visual-only variant, is
``LumbarSegmenter`` with learned class embeddings (see network.py).
"""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet
from torch import nn


class UNetBaseline(nn.Module):
    def __init__(self, num_classes: int, filters: tuple[int, ...] = (16, 32, 64, 128, 256)) -> None:
        super().__init__()
        n = len(filters)
        self.net = DynUNet(spatial_dims=2, in_channels=2, out_channels=num_classes,
                           kernel_size=[3] * n, strides=[1] + [2] * (n - 1), upsample_kernel_size=[2] * (n - 1),
                           filters=list(filters), norm_name="instance", act_name="leakyrelu",
                           deep_supervision=False, res_block=False)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(image)}
