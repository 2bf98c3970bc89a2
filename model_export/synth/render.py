"""From a tissue map to MR magnitude images: contrast, texture, partial volume, coil bias and Rician noise.

Contrasts are drawn per study from ranges chosen so the physical order always holds (T2: CSF >= healthy
nucleus > fat > marrow > muscle > annulus, a degenerated nucleus dark; T1: fat >= marrow > disc and
muscle > CSF), as SynthSeg does with its Gaussian mixture, but constrained so radiologists' rules of
thumb remain true on every image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import correlate1d, uniform_filter1d
from scipy.special import ndtri

from .geometry import SliceStack
from .tissues import NUM_TISSUES, Tissue

# (low, high) signal as a fraction of the brightest tissue, and texture strength
T2_RANGES = {
    Tissue.AIR: (0.0, 0.01), Tissue.FAT: (0.55, 0.75), Tissue.MUSCLE: (0.14, 0.24), Tissue.BOWEL: (0.2, 0.45),
    Tissue.LUNG: (0.01, 0.04), Tissue.MARROW: (0.32, 0.48), Tissue.CORTEX: (0.02, 0.06),
    Tissue.ANNULUS: (0.07, 0.14), Tissue.NUCLEUS: (0.7, 0.88), Tissue.NUCLEUS_DEGENERATED: (0.12, 0.24),
    Tissue.CSF: (0.9, 1.0), Tissue.CORD: (0.38, 0.5), Tissue.EPIDURAL_FAT: (0.55, 0.72),
    Tissue.LIGAMENT: (0.04, 0.1), Tissue.VESSEL: (0.02, 0.08), Tissue.MODIC1: (0.62, 0.8),
    Tissue.MODIC2: (0.5, 0.62), Tissue.SCLEROSIS: (0.05, 0.12), Tissue.HERNIA: (0.3, 0.5),
    Tissue.POSTERIOR_MARROW: (0.3, 0.42), Tissue.NERVE: (0.15, 0.3), Tissue.FLUID: (0.8, 0.95),
    Tissue.KIDNEY: (0.45, 0.6),
}
T1_RANGES = {
    Tissue.AIR: (0.0, 0.01), Tissue.FAT: (0.85, 1.0), Tissue.MUSCLE: (0.25, 0.33), Tissue.BOWEL: (0.25, 0.45),
    Tissue.LUNG: (0.01, 0.04), Tissue.MARROW: (0.58, 0.75), Tissue.CORTEX: (0.02, 0.06),
    Tissue.ANNULUS: (0.24, 0.32), Tissue.NUCLEUS: (0.3, 0.4), Tissue.NUCLEUS_DEGENERATED: (0.24, 0.32),
    Tissue.CSF: (0.06, 0.14), Tissue.CORD: (0.35, 0.45), Tissue.EPIDURAL_FAT: (0.8, 0.95),
    Tissue.LIGAMENT: (0.04, 0.1), Tissue.VESSEL: (0.02, 0.1), Tissue.MODIC1: (0.2, 0.3),
    Tissue.MODIC2: (0.85, 1.0), Tissue.SCLEROSIS: (0.05, 0.12), Tissue.HERNIA: (0.28, 0.38),
    Tissue.POSTERIOR_MARROW: (0.5, 0.66), Tissue.NERVE: (0.3, 0.4), Tissue.FLUID: (0.08, 0.16),
    Tissue.KIDNEY: (0.28, 0.38),
}
# texture amplitude per tissue: (fine grain over ~3 pixels, blotches over ~12 pixels)
TEXTURE = {Tissue.MARROW: (0.12, 0.06), Tissue.POSTERIOR_MARROW: (0.1, 0.05), Tissue.BOWEL: (0.15, 0.55),
           Tissue.FAT: (0.04, 0.04), Tissue.MUSCLE: (0.06, 0.1), Tissue.MODIC1: (0.12, 0.06),
           Tissue.MODIC2: (0.12, 0.06), Tissue.LUNG: (0.3, 0.5), Tissue.FLUID: (0.04, 0.04),
           Tissue.NUCLEUS: (0.05, 0.03), Tissue.HERNIA: (0.1, 0.05), Tissue.CORD: (0.04, 0.02),
           Tissue.KIDNEY: (0.08, 0.08), Tissue.EPIDURAL_FAT: (0.05, 0.05)}


@dataclass
class Contrast:
    weighting: str  # "T1" | "T2"
    lut: np.ndarray  # (NUM_TISSUES,) float32 signal per tissue
    texture: np.ndarray  # (NUM_TISSUES, 2) fine and coarse texture amplitude per tissue


def draw_contrast(weighting: str, rng: np.random.Generator, random_share: float = 0.0) -> Contrast:
    """Physically ordered tissue signals; with probability ``random_share`` fully random ones instead.

    A random contrast (SynthSeg's domain randomisation) gives every tissue its own uniform draw, air
    aside, so that a model can only learn shapes from it, never our renderer's idea of T1 and T2. The
    extra draw is made only when ``random_share`` > 0, so studies generated without it are unchanged.
    """
    if random_share > 0.0 and rng.random() < random_share:
        lut = rng.uniform(0.02, 1.0, NUM_TISSUES).astype(np.float32)
        lut[Tissue.AIR] = rng.uniform(0.0, 0.02)
        tex = np.zeros((NUM_TISSUES, 2), np.float32)
        for tissue, amp in TEXTURE.items():
            tex[tissue] = np.array(amp) * rng.uniform(0.3, 1.7)
        return Contrast(weighting, lut, tex)
    ranges = T2_RANGES if weighting == "T2" else T1_RANGES
    lut = np.zeros(NUM_TISSUES, np.float32)
    for tissue, (lo, hi) in ranges.items():
        lut[tissue] = rng.uniform(lo, hi)
    gamma = rng.uniform(0.85, 1.15)  # global contrast curve keeps the order
    lut = lut ** gamma
    if weighting == "T2":  # guarantee the orderings the issue names
        lut[Tissue.CSF] = max(lut[Tissue.CSF], lut[Tissue.NUCLEUS] + 0.02)
    else:
        lut[Tissue.FAT] = max(lut[Tissue.FAT], lut[Tissue.MARROW] + 0.05)
    tex = np.zeros((NUM_TISSUES, 2), np.float32)
    for tissue, amp in TEXTURE.items():
        tex[tissue] = np.array(amp) * rng.uniform(0.6, 1.4)
    return Contrast(weighting, lut, tex)


def texture_field(shape: tuple[int, int, int], rng: np.random.Generator, cell: int = 4) -> np.ndarray:
    """Smooth zero-mean noise per slice: coarse Gaussian cells repeated, then box-smoothed in-plane.

    (A box-smoothed step field is piecewise linear, as a linear zoom would give, at a fifth of the cost.)
    Rows are repeated and smoothed while the columns are still coarse, then the columns: the same
    numbers as repeating both first, with one full-size pass fewer.
    """
    n, rows, cols = shape
    coarse = rng.standard_normal((n, rows // cell + 2, cols // cell + 2)).astype(np.float32)
    field = uniform_filter1d(np.repeat(coarse, cell, axis=1)[:, :rows], cell, axis=1)
    return uniform_filter1d(np.repeat(field, cell, axis=2)[:, :, :cols], cell, axis=2)


def apply_texture(image: np.ndarray, tissue: np.ndarray, contrast: Contrast, rng: np.random.Generator
                  ) -> np.ndarray:
    """Tissue heterogeneity (trabecular marrow, bowel content, muscle fibres) on the series grid.

    Applied after partial volume and resampling, where the arrays are a tenth of the fine grid's size;
    the texture is smooth over a few pixels, so blurring it first would change little.
    """
    fine = texture_field(image.shape, rng, 3)
    fine *= contrast.texture[tissue, 0]
    coarse = texture_field(image.shape, rng, 12)
    coarse *= contrast.texture[tissue, 1]
    fine += coarse
    fine += 1.0
    np.maximum(fine, 0.05, out=fine)
    image *= fine
    return image


def resample(volume: sitk.Image, stack: SliceStack, interpolator: int) -> np.ndarray:
    """Sample a fine image on the series grid; returns (slices, rows, cols) sorted along the normal."""
    out = sitk.Resample(volume, stack.reference(), sitk.Transform(), interpolator, 0.0, volume.GetPixelID())
    return sitk.GetArrayFromImage(out)


def slab_mean_along_x(volume: np.ndarray, half_width: float) -> np.ndarray:
    """Mean of the (z, y, x) volume shifted ``half_width`` voxels either way along x, linear in x and
    edge-padded: the two planes of a slab folded into one volume (one 1D filter pass), so that the
    costly 3D resample runs once instead of twice."""
    k = int(np.floor(half_width))
    frac = half_width - k
    weights = np.zeros(2 * k + 3, np.float32)
    centre = k + 1
    for offset, weight in ((k, 1 - frac), (k + 1, frac)):
        weights[centre + offset] += 0.5 * weight
        weights[centre - offset] += 0.5 * weight
    return correlate1d(volume, weights, axis=2, mode="nearest")


def partial_volume_sample(signal: np.ndarray, origin: np.ndarray, spacing: tuple[float, float, float],
                          stack: SliceStack) -> np.ndarray:
    """Signal of each slice as the mean of two planes a quarter thickness either side of its centre:
    the thickness of a 3-5 mm slice averages tissue, which a single centre plane would not.

    ``signal`` is the fine (z, y, x) grid, x being left-right. Sagittal slice normals lie within a few
    degrees of x, so the two planes are taken along x on the fine grid, before the single resample.
    """
    slab = slab_mean_along_x(signal.astype(np.float32, copy=False), stack.thickness / 4 / spacing[0])
    return resample(to_sitk(slab, origin, spacing), stack, sitk.sitkLinear)


def bias_field(stack: SliceStack, rng: np.random.Generator, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Receive-coil sensitivity: brighter near the posterior coil, smooth elsewhere.

    Returned as the in-plane field (rows, cols) and a factor per slice (slices,), whose product is the
    3D field: it is applied slice by slice, never built at full size.
    """
    rows, cols = stack.rows, stack.cols
    v, u = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
    posterior = float(np.sign(stack.row_dir[1])) * u  # +1 at the patient's back for sagittal planes
    c = rng.normal(0, 1, 4)
    log = strength * (0.8 * posterior + 0.3 * c[0] * v + 0.2 * c[1] * u * v + 0.2 * c[2] * v ** 2 - 0.2 * u ** 2)
    field = np.exp(log).astype(np.float32)
    slope = rng.uniform(-0.04, 0.04)
    per_slice = 1.0 + slope * np.linspace(-1, 1, stack.num_slices)
    return field, per_slice.astype(np.float32)


# Equiprobable quantiles of the standard normal (midpoints of 65536 bins of equal probability). Looking
# up 16 random bits in this table is a normal draw to within 1e-4 sigma near the mean, clipped at
# +-4.3 sigma (1.5e-5 of draws lie beyond): indistinguishable once the image is rounded to integers,
# and about four times cheaper than numpy's float32 normals (two per pixel of every series).
NORMAL_QUANTILES = ndtri((np.arange(65536) + 0.5) / 65536).astype(np.float32)


def acquire(image: np.ndarray, stack: SliceStack, rng: np.random.Generator, noise: tuple[float, float],
            bias: tuple[float, float], scale: float) -> np.ndarray:
    """Bias field, Rician noise and scaling to scanner integers (uint16, 12 bits used).

    The magnitude |signal + n1 + i n2| with n1, n2 independent N(0, sigma^2) per pixel. The scale to
    scanner units is folded into the bias field and the noise table, saving a pass over the volume.
    """
    field, per_slice = bias_field(stack, rng, rng.uniform(*bias))
    sigma = np.float32(rng.uniform(*noise) * scale)
    draws = rng.integers(0, 65536, size=(2, *image.shape), dtype=np.uint16)
    real = np.empty(image.shape, np.float32)
    field *= np.float32(scale)
    for k in range(image.shape[0]):
        np.multiply(image[k], field * per_slice[k], out=real[k])
    # in place, one float32 temporary besides the result: these arrays are the largest of the study
    noise_part = np.take(NORMAL_QUANTILES * sigma, draws[0])
    real += noise_part
    real *= real
    np.take(np.square(NORMAL_QUANTILES * sigma), draws[1], out=noise_part)
    real += noise_part
    np.sqrt(real, out=real)
    np.minimum(real, np.float32(4095), out=real)
    return real.astype(np.uint16)


def to_sitk(volume: np.ndarray, origin: np.ndarray, spacing: tuple[float, ...]) -> sitk.Image:
    img = sitk.GetImageFromArray(volume)
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetSpacing(tuple(float(v) for v in spacing))
    return img
