"""Fusion head where the text guides: per-class dynamic heads and per-level finding scores.

Segmentation follows the CLIP-Driven Universal Model (Liu et al. 2023): a controller maps each class's
embedding together with the pooled image feature to the weights of a tiny three-layer 1x1-conv head,
which then runs on the decoder features. The heads are batched matrix products over flattened pixels,
so the class count is just the first dimension of the embedding input and the exported graph accepts
any ontology size. (They were einsums; ONNX Runtime's CPU Einsum took 43% of the fusion graph's time.)

The three-layer head runs on the features averaged to stride 2, and the controller also generates a
per-class linear map of the full-resolution features that is added to the upsampled result. At full
resolution the head's K x width hidden channels cost about as much as the rest of the network on a CPU;
the linear term is what DynUNet's own output layer is, and keeps the boundaries at full resolution.

The structure embeddings are centred over the classes queried together before the controller sees
them. The prompts of neighbouring levels share most of their embedding ("L3 vertebra" and "L4 vertebra"
have cosine 0.875 in MiniLM), and every class starts from the same generated head, so without centring
the heads of similar classes stay alike: at step 950 of a CPU run every disc was labelled "L5/S1 disc".
The segmentation is a softmax over the queried classes, so it already depends on which are queried
together; centring makes the heads depend on it too.

Findings: decoder features are projected per pixel and scored against each finding's embedding (passed
through a small MLP). With ``finding_conv_layers`` the projection first reads 3x3 convolutions at stride 2.
Without them a finding's pixel logit is a linear map of the 16 features the segmentation reads, so the
findings get no capacity of their own; a herniation is a shape (disc material past the line of the
vertebral bodies' backs), which is more than an intensity for a linear readout to pick up. The
convolutions cost about 3 % of a training step.

The pixel logits are pooled inside each structure over the whole volume as a log-mean-exp, a soft
maximum, so a focal herniation on a few slices can still raise its level's score. With ``pool_dilation``
each structure's mask is first widened by that many pixels (``widen_masks``), so that herniated material
just outside a predicted disc outline still counts for its disc. Neither option helped at one CPU-hour of
training (model_export/RESULTS.md, session 10); both are off by default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from service.infer.finding_maps import FINDING_LOGIT_CLAMP


class FusionHead(nn.Module):
    def __init__(self, feat_dim: int, embed_dim: int, pooled_dim: int, head_width: int = 8,
                 finding_dim: int = 32, controller_width: int = 128, center_embeddings: bool = True,
                 pool_dilation: int = 0, finding_conv_layers: int = 0, finding_conv_width: int = 32) -> None:
        super().__init__()
        self.center_embeddings = center_embeddings
        self.pool_dilation = pool_dilation
        c, d = feat_dim, head_width
        self.shapes = [(d, c), (d,), (d, d), (d,), (d,), (), (c,)]  # ..., full-resolution linear map
        n_params = sum(math.prod(s) for s in self.shapes)
        self.pooled_proj = nn.Linear(pooled_dim, controller_width, bias=False)
        self.text_proj = nn.Linear(embed_dim, controller_width)
        self.controller = nn.Sequential(nn.GELU(), nn.Linear(controller_width, controller_width), nn.GELU(),
                                        nn.Linear(controller_width, n_params))
        nn.init.normal_(self.controller[-1].weight, std=0.02)
        with torch.no_grad():  # every class starts from one working head; the embeddings move it apart
            self.controller[-1].bias.copy_(self._initial_head())
        self.background = nn.Conv2d(c, 1, 1)
        self.finding_context: nn.Module | None = None
        if finding_conv_layers > 0:
            layers: list[nn.Module] = []
            for i in range(finding_conv_layers):
                layers += [nn.Conv2d(c if i == 0 else finding_conv_width, finding_conv_width, 3, padding=1), nn.GELU()]
            self.finding_context = nn.Sequential(*layers)
        self.pixel_proj = nn.Conv2d(finding_conv_width if finding_conv_layers > 0 else c, finding_dim, 1)
        self.finding_mlp = nn.Sequential(nn.Linear(embed_dim, 64), nn.GELU(), nn.Linear(64, finding_dim + 1))
        self.finding_dim = finding_dim

    def segment(self, features: torch.Tensor, pooled: torch.Tensor, class_embeddings: torch.Tensor
                ) -> torch.Tensor:
        """(B, K+1, h, w) logits: channel 0 is background, channel k the class of embedding row k-1."""
        if self.center_embeddings:
            class_embeddings = F.normalize(class_embeddings - class_embeddings.mean(0, keepdim=True), dim=-1)
        hidden = self.text_proj(class_embeddings).unsqueeze(0) + self.pooled_proj(pooled).unsqueeze(1)
        params = self.controller(hidden)  # (B, K, n_params)
        w1, b1, w2, b2, w3, b3, w_full = self._split(params)
        coarse = F.avg_pool2d(features, 2)
        b, k = params.shape[:2]
        rows, cols = coarse.shape[-2:]
        # 1x1 convolutions as batched matrix products over flattened pixels, (B, K, d, pixels)
        h = F.relu(w1 @ coarse.flatten(2).unsqueeze(1) + b1[..., None])
        h = F.relu(w2 @ h + b2[..., None])
        logits = (w3.unsqueeze(2) @ h).squeeze(2) + b3[..., None]
        logits = F.interpolate(logits.reshape(b, k, rows, cols), size=features.shape[-2:], mode="bilinear",
                               align_corners=False)
        logits = logits + (w_full @ features.flatten(2)).reshape(b, k, *features.shape[-2:])
        return torch.cat([self.background(features), logits], dim=1)

    def _initial_head(self) -> torch.Tensor:
        """Flat parameters of a He-initialised head (biases and the full-resolution map zero).

        A hypernetwork whose outputs start near zero generates heads whose gradients are products of
        near-zero weights: the class heads barely train and the static background wins everywhere.
        """
        c, d = self.shapes[0][1], self.shapes[0][0]
        w1, w2, w3 = (torch.randn(n) * math.sqrt(gain / fan_in) for n, fan_in, gain in
                      ((d * c, c, 2.0), (d * d, d, 2.0), (d, d, 1.0)))
        return torch.cat([w1, torch.zeros(d), w2, torch.zeros(d), w3, torch.zeros(1), torch.zeros(c)])

    def _split(self, params: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for shape in self.shapes:
            n = math.prod(shape)
            out.append(params[..., start:start + n].reshape(*params.shape[:2], *shape))
            start += n
        return out

    def finding_logits(self, features: torch.Tensor, finding_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, F, h, w) per-pixel logits of each finding."""
        query = self.finding_mlp(finding_embeddings)
        if self.finding_context is None:
            pixels = self.pixel_proj(features)
        else:  # 3x3 context at stride 2, as the segmentation head's layers, then back to the feature grid
            pixels = self.pixel_proj(self.finding_context(F.avg_pool2d(features, 2)))
            pixels = F.interpolate(pixels, size=features.shape[-2:], mode="bilinear", align_corners=False)
        d = self.finding_dim  # positive indices: ONNX gathers with negative ones are easy to get wrong
        scores = (query[:, :d] @ pixels.flatten(2)).reshape(pixels.shape[0], -1, *pixels.shape[-2:])
        return scores / math.sqrt(d) + query[:, d:d + 1].transpose(0, 1)[:, :, None, None]


def widen_masks(weights: torch.Tensor, dilation: int) -> torch.Tensor:
    """(B, K, h, w) class masks, each widened by ``dilation`` pixels in the slice plane (a square max).

    The numpy twin is service.infer.finding_maps.FindingMaps.structure_mask.
    """
    if dilation <= 0:
        return weights
    return F.max_pool2d(weights, 2 * dilation + 1, stride=1, padding=dilation)


def finding_sums(finding_pixel_logits: torch.Tensor, class_weights: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slice sums for log-mean-exp pooling: class mass (B, K) and sum of weight*exp(logit) (B, K, F)."""
    expd = torch.exp(finding_pixel_logits.clamp(-FINDING_LOGIT_CLAMP, FINDING_LOGIT_CLAMP))
    return class_weights.sum(dim=(2, 3)), class_weights.flatten(2) @ expd.flatten(2).transpose(1, 2)


def pooled_finding_logits(class_mass: torch.Tensor, finding_mass: torch.Tensor) -> torch.Tensor:
    """(K, F) volume-level logits from per-slice sums; the numpy twin is service.infer.model.pool_findings."""
    return torch.log(finding_mass.sum(0).clamp(min=1e-30)) - torch.log(class_mass.sum(0).clamp(min=1e-30))[:, None]
