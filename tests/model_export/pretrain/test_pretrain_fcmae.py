"""FCMAE with dense masking: no leak from masked pixels, sparse-equivalent GRN, the paper's loss."""

from __future__ import annotations

import pytest
import torch
from transformers import ConvNextV2Model

from model_export.model.image_encoder import ImageEncoder, convnext_v2_config
from model_export.pretrain import fcmae
from model_export.pretrain.fcmae import (
    FCMAE,
    fcmae_loss,
    masked_encoder_forward,
    normalised_targets,
    random_mask,
    reconstruct,
    visible_at,
)


def randomised_backbone(seed: int = 0) -> ConvNextV2Model:
    """pico-mini with random GRN weights and biases: fresh weights zero them, which would hide leaks."""
    torch.manual_seed(seed)
    backbone = ConvNextV2Model(convnext_v2_config("pico-mini")).eval()
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "grn" in name or name.endswith("bias"):
                p.normal_(0.0, 0.5)
    return backbone


def test_masked_forward_equals_convnextv2_when_nothing_is_masked():
    backbone = randomised_backbone()
    x = torch.randn(2, 2, 96, 128)
    reference = backbone(pixel_values=x, output_hidden_states=True).hidden_states[1:]
    ours = masked_encoder_forward(backbone, x, torch.zeros(2, 3, 4, dtype=torch.bool))
    for a, b in zip(reference, ours, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_changing_masked_pixels_changes_visible_outputs_by_exactly_zero():
    backbone = randomised_backbone(1)
    x = torch.randn(2, 2, 96, 128)
    mask = random_mask(2, (3, 4), 0.6, torch.Generator().manual_seed(3))
    hidden = ~visible_at(mask, (96, 128)).expand_as(x)
    y = x.clone()
    y[hidden] = torch.randn(int(hidden.sum())) * 1000.0
    z = x.clone()
    z[hidden] = float("nan")
    with torch.no_grad():
        base = masked_encoder_forward(backbone, x, mask)
        for other in (masked_encoder_forward(backbone, y, mask), masked_encoder_forward(backbone, z, mask)):
            for a, b in zip(base, other, strict=True):
                visible = visible_at(mask, a.shape[-2:]).expand_as(a)
                assert torch.equal(a[visible], b[visible])  # exactly, not within a tolerance
                assert torch.count_nonzero(b[~visible]) == 0


def test_masked_cells_are_as_if_absent_so_grn_statistics_use_visible_positions_only(monkeypatch):
    """Appending fully masked patches must not change any visible output; a dense GRN would."""
    backbone = randomised_backbone(2)
    x = torch.randn(1, 2, 64, 96)
    mask = random_mask(1, (2, 3), 0.5, torch.Generator().manual_seed(5))
    padded = torch.cat([x, torch.randn(1, 2, 64, 64)], dim=-1)
    padded_mask = torch.cat([mask, torch.ones(1, 2, 2, dtype=torch.bool)], dim=-1)

    def max_visible_difference() -> float:
        with torch.no_grad():
            a = masked_encoder_forward(backbone, x, mask)
            b = masked_encoder_forward(backbone, padded, padded_mask)
        return max(float((p - q[..., : p.shape[-1]])[visible_at(mask, p.shape[-2:]).expand_as(p)].abs().max())
                   for p, q in zip(a, b, strict=True))

    assert max_visible_difference() < 1e-5
    monkeypatch.setattr(fcmae, "masked_grn", lambda grn, h, visible: grn(h))  # statistics over all positions
    assert max_visible_difference() > 1e-3


def test_random_mask_masks_the_ratio_of_cells_and_leaves_some_visible():
    mask = random_mask(4, (5, 5), 0.6, torch.Generator().manual_seed(0))
    assert mask.shape == (4, 5, 5)
    assert mask.sum(dim=(1, 2)).tolist() == [15, 15, 15, 15]
    assert not torch.equal(mask[0], mask[1])
    assert random_mask(1, (1, 2), 0.99).sum() == 1  # never everything


def test_loss_counts_masked_patches_of_present_channels_only():
    x = torch.rand(2, 2, 64, 64)
    mask = torch.tensor([[[True, False], [False, True]]] * 2)
    target, _, _ = normalised_targets(x)
    pred = target.clone()
    pred[~mask] = 100.0  # visible patches: wrong, but not in the loss
    assert float(fcmae_loss(pred, x, mask)) < 1e-10
    pred[:, :, :, 1] = 5.0  # the T1 channel wrong everywhere
    present = torch.tensor([[True, False], [True, False]])
    assert float(fcmae_loss(pred, x, mask, present)) < 1e-10
    assert float(fcmae_loss(pred, x, mask)) > 1.0


def test_reconstruction_keeps_visible_patches_and_inverts_the_patch_normalisation():
    x = torch.rand(1, 2, 64, 64)
    mask = torch.tensor([[[True, False], [False, False]]])
    target, _, _ = normalised_targets(x)
    torch.testing.assert_close(reconstruct(target, x, mask), x, rtol=0, atol=1e-5)
    recon = reconstruct(torch.zeros_like(target), x, mask)
    assert torch.equal(recon[..., 32:, :], x[..., 32:, :])
    torch.testing.assert_close(recon[0, 0, :32, :32], x[0, 0, :32, :32].mean().expand(32, 32), rtol=0, atol=1e-5)


def test_fcmae_learns_a_fixed_batch_and_its_weights_load_into_the_fine_tuning_encoder():
    torch.manual_seed(0)
    model = FCMAE(ConvNextV2Model(convnext_v2_config("pico-mini")), decoder_dim=32)
    x = torch.rand(2, 2, 64, 64)
    mask = random_mask(2, (2, 2), 0.5, torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(8):
        loss = fcmae_loss(model(x, mask), x, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses
    encoder = ImageEncoder("pico-mini", 2)
    encoder.backbone.load_state_dict(model.backbone.state_dict(), strict=True)


def test_image_size_off_the_patch_grid_is_refused():
    with pytest.raises(ValueError, match="multiple of the 32-pixel patch"):
        masked_encoder_forward(randomised_backbone(), torch.zeros(1, 2, 48, 64), torch.zeros(1, 1, 2, dtype=torch.bool))
