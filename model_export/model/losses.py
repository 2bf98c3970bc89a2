"""Losses: Dice + cross-entropy with partial labels, and per-level finding BCE.

Partial labels (Shi et al., marginal loss): a source that does not label some classes has those voxels
marked background, so the predicted probability of an unlabelled class is merged into background before
the Dice and cross-entropy terms see it. Moving probability between background and an unlabelled class then does not
change the loss, which is what "left out of that source's loss" means for a softmax output. Real scans
labelled for some structures only go further: an unlabelled voxel there may be anything (IGNORE_INDEX).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model_export.model.fusion import finding_sums, pooled_finding_logits, widen_masks
from model_export.real_cases import RANK_BASE

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


IGNORE_INDEX = 255
"""Target value of a voxel whose class the source does not state (partial labels): no loss at all."""
CERTAIN_BACKGROUND = 254
"""Target value of a voxel that is background for certain, though the source leaves classes unlabelled
(a partial case's tissue far in front of its labels): no unlabelled class is merged into its background."""


class PartialDiceCELoss(torch.nn.Module):
    """Soft Dice + cross-entropy over the voxels whose class the source states.

    With every voxel stated this is MONAI's ``DiceCELoss(softmax, include_background=False, batch=True)`` on
    the merged distribution. Voxels marked ``IGNORE_INDEX`` (unknown: a body-only case's posterior
    elements, discs and soft tissue) add nothing to either term. Voxels marked ``CERTAIN_BACKGROUND`` are
    background in the full distribution: an unlabelled class (a body-only case's sacrum or discs) costs
    there as any labelled one does. Voxels marked ``RANK_BASE + r`` (the r-th
    body from the bottom, level unknown) add the consecutive-run loss: the names of a case's bodies are
    ``chain[r - 1 + k]`` for one unknown offset k, so the loss is minus the log of the summed likelihood
    over the offsets, and the model is free to choose which run it names.
    """

    def __init__(self, chain: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.chain = tuple(chain)
        """Class values from the bottom up for ranked bodies: sacrum, L5, L4, ... (Ontology.caudal_to_cranial)."""
        self.smooth = 1e-5

    def forward(self, logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor,
                rank_count: int = 0) -> torch.Tensor:
        log_probs = merge_unlabelled(logits, labelled)
        n_classes = log_probs.shape[1]
        target = target.long()
        certain = target == CERTAIN_BACKGROUND
        known = (target < n_classes) | certain
        background = F.log_softmax(logits, dim=1)[:, 0] if bool(certain.any()) else None
        loss = self._dice_ce(log_probs, torch.where(target < n_classes, target, 0), known, certain, background)
        if rank_count and self.chain:
            loss = loss + self._rank_loss(log_probs, target, rank_count)
        return loss

    def _dice_ce(self, log_probs: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                 certain: torch.Tensor, background: torch.Tensor | None) -> torch.Tensor:
        weight = known.float()
        if not bool(known.any()):
            return log_probs.sum() * 0.0
        chosen = log_probs.gather(1, target[:, None])[:, 0]
        if background is not None:
            chosen = torch.where(certain, background, chosen)
        ce = -(chosen * weight).sum() / weight.sum()
        probs = log_probs.exp()[:, 1:] * weight[:, None]
        onehot = F.one_hot(target, log_probs.shape[1]).permute(0, 3, 1, 2)[:, 1:].float() * weight[:, None]
        inter = (probs * onehot).sum(dim=(0, 2, 3))
        denominator = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
        dice = 1.0 - (2.0 * inter + self.smooth) / (denominator + self.smooth)
        return dice.mean() + ce

    def _rank_loss(self, log_probs: torch.Tensor, target: torch.Tensor, rank_count: int) -> torch.Tensor:
        chain = torch.tensor(self.chain, device=log_probs.device)
        offsets = len(self.chain) - rank_count + 1
        if offsets < 1:
            raise ValueError(f"{rank_count} ranked bodies do not fit a chain of {len(self.chain)} names")
        chain_log_probs = log_probs[:, chain]  # (B, len(chain), H, W)
        present = [r for r in range(1, rank_count + 1) if bool((target == RANK_BASE + r).any())]
        if not present:
            return log_probs.sum() * 0.0
        scores = torch.zeros(offsets, device=log_probs.device)
        for r in present:
            where = (target == RANK_BASE + r)[:, None].float()
            per_class = (chain_log_probs * where).sum(dim=(0, 2, 3)) / where.sum()
            scores = scores + per_class[r - 1: r - 1 + offsets]
        return -torch.logsumexp(scores, dim=0) / len(present)


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
