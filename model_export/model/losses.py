"""Losses: Dice + cross-entropy with partial labels, and per-level finding BCE.

Partial labels (Shi et al., marginal loss): a source that does not label some classes has those voxels
marked background, so the predicted probability of an unlabelled class is merged into background before
MONAI's DiceCELoss sees it. Moving probability between background and an unlabelled class then does not
change the loss, which is what "left out of that source's loss" means for a softmax output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from model_export.model.fusion import finding_sums, pooled_finding_logits, widen_masks

_ABSENT_LOG_PROB = -30.0


def merge_unlabelled(logits: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Log-probabilities with every unlabelled class folded into background (channel 0).

    ``labelled`` is a (C,) bool mask over channels; channel 0 counts as labelled.
    """
    log_probs = F.log_softmax(logits, dim=1)
    labelled = labelled.clone()
    labelled[0] = True
    if bool(labelled.all()):
        return log_probs
    fold = ~labelled
    fold[0] = True
    background = torch.logsumexp(log_probs[:, fold], dim=1, keepdim=True)
    absent = torch.full_like(log_probs, _ABSENT_LOG_PROB)
    merged = torch.where(labelled[None, :, None, None], log_probs, absent)
    return torch.cat([background, merged[:, 1:]], dim=1)


class PartialDiceCELoss(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # softmax of log-probabilities gives the probabilities back, so DiceCE sees the merged distribution
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
                                  smooth_nr=1e-5, smooth_dr=1e-5, batch=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
        return self.dice_ce(merge_unlabelled(logits, labelled), target.unsqueeze(1).long())


def finding_loss(finding_pixel_logits: torch.Tensor, target_low: torch.Tensor, num_structures: int,
                 finding_targets: torch.Tensor, finding_known: torch.Tensor, dilation: int = 0) -> torch.Tensor:
    """BCE of volume-pooled finding logits for the structures present and labelled for each finding.

    ``target_low`` is the label map at the resolution of the pixel logits; ``finding_targets`` and
    ``finding_known`` are (K, F) floats / bools; each true mask is widened by ``dilation`` pixels, as
    serving widens the delivered ones.
    """
    onehot = F.one_hot(target_low.long(), num_structures + 1).permute(0, 3, 1, 2)[:, 1:].float()
    onehot = widen_masks(onehot, dilation)
    class_mass, finding_mass = finding_sums(finding_pixel_logits, onehot)
    present = class_mass.sum(0) > 0
    mask = finding_known & present[:, None]
    if not bool(mask.any()):
        return finding_pixel_logits.sum() * 0.0
    logits = pooled_finding_logits(class_mass, finding_mass)
    return F.binary_cross_entropy_with_logits(logits[mask], finding_targets[mask])
