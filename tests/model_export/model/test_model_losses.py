"""The partial-label loss leaves unlabelled classes out; the finding loss uses only stated levels."""

from __future__ import annotations

import torch

from model_export.model.losses import PartialDiceCELoss, finding_loss, merge_unlabelled


def _logits_and_target():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))  # class 3 never appears: this source does not label it
    return logits, target


def test_moving_probability_between_background_and_an_unlabelled_class_leaves_the_loss_unchanged():
    logits, target = _logits_and_target()
    labelled = torch.tensor([True, True, True, False])
    loss = PartialDiceCELoss()
    shifted = logits.clone()
    # raise class 3 and lower background so that their summed probability stays the same
    p = torch.softmax(logits, 1)
    merged = p[:, 0] + p[:, 3]
    new3 = 0.9 * merged
    new0 = merged - new3
    shifted[:, 3] = torch.log(new3) - torch.log(p[:, 3]) + logits[:, 3]
    shifted[:, 0] = torch.log(new0) - torch.log(p[:, 0]) + logits[:, 0]
    assert torch.allclose(torch.softmax(shifted, 1)[:, 1:3], p[:, 1:3], atol=1e-5)
    assert torch.isclose(loss(logits, target, labelled), loss(shifted, target, labelled), atol=1e-5)


def test_the_same_shift_changes_the_loss_when_the_class_is_labelled():
    logits, target = _logits_and_target()
    labelled = torch.ones(4, dtype=torch.bool)
    loss = PartialDiceCELoss()
    shifted = logits.clone()
    shifted[:, 3] += 3.0
    shifted[:, 0] -= 1.0
    assert not torch.isclose(loss(logits, target, labelled), loss(shifted, target, labelled), atol=1e-3)


def test_merged_distribution_sums_to_one_and_empties_unlabelled_channels():
    logits, _ = _logits_and_target()
    merged = merge_unlabelled(logits, torch.tensor([True, True, False, False])).exp()
    assert torch.allclose(merged.sum(1), torch.ones(2, 8, 8), atol=1e-5)
    assert merged[:, 2:].max() < 1e-10


def test_finding_loss_ignores_levels_the_source_does_not_state():
    torch.manual_seed(0)
    pixel_logits = torch.randn(2, 2, 6, 6, requires_grad=True)
    target = torch.zeros(2, 6, 6, dtype=torch.long)
    target[:, :3] = 1
    target[:, 3:] = 2
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    known = torch.tensor([[True, False], [False, False]])  # only (structure 1, finding 0) is stated
    loss = finding_loss(pixel_logits, target, 2, targets, known)
    loss.backward()
    grad = pixel_logits.grad
    assert grad[:, 0, :3].abs().sum() > 0  # finding 0 inside structure 1 drives the loss
    assert grad[:, 1].abs().sum() == 0  # finding 1 is stated nowhere
    assert grad[:, 0, 3:].abs().sum() == 0  # structure 2 is not stated for finding 0


def test_widened_finding_loss_also_trains_the_pixels_just_outside_a_structure():
    torch.manual_seed(0)
    pixel_logits = torch.randn(1, 1, 8, 6, requires_grad=True)
    target = torch.zeros(1, 8, 6, dtype=torch.long)
    target[:, 2:4] = 1  # rows 2-3; widened by one pixel: rows 1-4
    loss = finding_loss(pixel_logits, target, 1, torch.tensor([[1.0]]), torch.tensor([[True]]), dilation=1)
    loss.backward()
    rows_with_gradient = (pixel_logits.grad[0, 0].abs().sum(1) > 0).nonzero().ravel().tolist()
    assert rows_with_gradient == [1, 2, 3, 4]


def test_with_every_voxel_stated_the_loss_is_monai_dice_ce_on_the_merged_distribution():
    from monai.losses import DiceCELoss

    logits, target = _logits_and_target()
    labelled = torch.tensor([True, True, True, False])
    monai = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, smooth_nr=1e-5,
                       smooth_dr=1e-5, batch=True)
    expected = monai(merge_unlabelled(logits, labelled), target[:, None])
    assert torch.isclose(PartialDiceCELoss()(logits, target, labelled), expected, atol=1e-5)


def test_unknown_voxels_get_zero_gradient():
    from model_export.model.losses import IGNORE_INDEX

    logits, target = _logits_and_target()
    logits.requires_grad_(True)
    target[:, :4] = IGNORE_INDEX
    PartialDiceCELoss()(logits, target, torch.ones(4, dtype=torch.bool)).backward()
    assert logits.grad[:, :, :4].abs().max() == 0
    assert logits.grad[:, :, 4:].abs().max() > 0


def test_posterior_elements_of_a_body_only_case_get_zero_gradient():
    """A body labelled L4 (value 3) beside its unlabelled arch: the arch may be L4 or anything else."""
    from model_export.model.losses import CERTAIN_BACKGROUND, IGNORE_INDEX

    torch.manual_seed(1)
    logits = torch.randn(1, 20, 12, 12, requires_grad=True)
    target = torch.full((1, 12, 12), IGNORE_INDEX)
    target[0, 4:8, 0:3] = CERTAIN_BACKGROUND  # far in front of the body: background
    target[0, 4:8, 4:8] = 3  # the body
    labelled = torch.zeros(20, dtype=torch.bool)
    labelled[[0, 3]] = True
    PartialDiceCELoss()(logits, target, labelled).backward()
    arch = logits.grad[0, :, 4:8, 8:]
    assert arch.abs().max() == 0
    assert logits.grad[0, :, 4:8, 4:8].abs().max() > 0


def _ranked(names: list[int], chain_len: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that name body r (from the bottom) ``names[r - 1]`` with high confidence."""
    from model_export.real_cases import RANK_BASE

    logits = torch.zeros(1, 8, 4, 3 * len(names))
    target = torch.full((1, 4, 3 * len(names)), 255)
    for r, name in enumerate(names, start=1):
        logits[0, name, :, 3 * (r - 1): 3 * r] = 8.0
        target[0, :, 3 * (r - 1): 3 * r] = RANK_BASE + r
    return logits, target


def test_ranked_bodies_cost_the_same_whichever_consecutive_run_names_them():
    loss = PartialDiceCELoss(chain=(1, 2, 3, 4, 5, 6))
    labelled = torch.ones(8, dtype=torch.bool)
    low = loss(*_ranked([1, 2, 3]), labelled, rank_count=3)
    high = loss(*_ranked([3, 4, 5]), labelled, rank_count=3)
    assert torch.isclose(low, high, atol=1e-4)


def test_ranked_bodies_named_out_of_order_cost_more_than_a_run():
    loss = PartialDiceCELoss(chain=(1, 2, 3, 4, 5, 6))
    labelled = torch.ones(8, dtype=torch.bool)
    run = loss(*_ranked([2, 3, 4]), labelled, rank_count=3)
    swapped = loss(*_ranked([3, 2, 4]), labelled, rank_count=3)
    skipped = loss(*_ranked([2, 4, 5]), labelled, rank_count=3)
    assert swapped > run + 1.0 and skipped > run + 1.0


def test_an_unlabelled_class_costs_where_the_background_is_certain():
    """A body-only case leaves the sacrum unlabelled, yet no sacrum lies far in front of the bodies."""
    from model_export.model.losses import CERTAIN_BACKGROUND

    target = torch.full((1, 4, 4), CERTAIN_BACKGROUND)
    labelled = torch.tensor([True, False, True])  # class 1 (sacrum) unlabelled
    calm, sacrum_there = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    sacrum_there[:, 1] = 6.0
    loss = PartialDiceCELoss()
    assert loss(sacrum_there, target, labelled) > loss(calm, target, labelled) + 3.0
    merged_only = torch.zeros(1, 4, 4, dtype=torch.long)  # plain background: the sacrum is merged into it
    assert loss(sacrum_there, merged_only, labelled) <= loss(calm, merged_only, labelled)
