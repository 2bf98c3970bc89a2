"""Training-time augmentation (MONAI) and sequence dropout.

One random affine is drawn per step and applied to every slice of the step, because the finding loss
pools over the slices of one study and they must stay aligned. No flips: up-down order names the levels
and the posterior side is where herniations are.
"""

from __future__ import annotations

import torch
from monai.transforms import RandAdjustContrast, RandAffine, RandGaussianNoise, RandScaleIntensity


class StepAugment:
    def __init__(self, seed: int, sequence_dropout: float, enabled: bool = True) -> None:
        self.enabled = enabled
        self.sequence_dropout = sequence_dropout
        self.generator = torch.Generator().manual_seed(seed)
        self.affine = RandAffine(prob=0.8, rotate_range=0.25, scale_range=(0.15, 0.15),
                                 translate_range=(12, 12), shear_range=(0.05, 0.05), padding_mode="zeros")
        self.gamma = RandAdjustContrast(prob=0.5, gamma=(0.7, 1.5))
        self.scale = RandScaleIntensity(prob=0.5, factors=0.2)
        self.noise = RandGaussianNoise(prob=0.3, std=0.03)
        for i, t in enumerate((self.affine, self.gamma, self.scale, self.noise)):
            t.set_random_state(seed + i)

    def _rand(self) -> float:
        return float(torch.rand(1, generator=self.generator))

    def __call__(self, image: torch.Tensor, target: torch.Tensor, has_t2: bool, has_t1: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 2, S, S), target (B, S, S) -> augmented copies."""
        image = image.clone()
        if self.enabled:
            self.affine.randomize(None)
            images, targets = [], []
            for i in range(image.shape[0]):
                images.append(torch.as_tensor(self.affine(image[i], randomize=False, mode="bilinear")))
                targets.append(torch.as_tensor(self.affine(target[i][None].float(), randomize=False,
                                                           mode="nearest"))[0].long())
            image, target = torch.stack(images), torch.stack(targets)
            for c, present in enumerate((has_t2, has_t1)):
                if not present:  # an absent sequence stays all zeros, as the service feeds it
                    continue
                channel = image[:, c].clone()
                channel = torch.as_tensor(self.gamma(channel.clamp(min=0)))
                channel = torch.as_tensor(self.scale(channel))
                image[:, c] = torch.as_tensor(self.noise(channel))
        if has_t2 and has_t1 and self.sequence_dropout > 0:
            r = self._rand()
            if r < self.sequence_dropout:
                image[:, 0] = 0
            elif r < 2 * self.sequence_dropout:
                image[:, 1] = 0
        return image.float(), target.long()
