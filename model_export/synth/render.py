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
from scipy.ndimage import uniform_filter1d, zoom

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
    Tissue.SKIN: (0.3, 0.4),
}
T1_RANGES = {
    Tissue.AIR: (0.0, 0.01), Tissue.FAT: (0.85, 1.0), Tissue.MUSCLE: (0.25, 0.33), Tissue.BOWEL: (0.25, 0.45),
    Tissue.LUNG: (0.01, 0.04), Tissue.MARROW: (0.58, 0.75), Tissue.CORTEX: (0.02, 0.06),
    Tissue.ANNULUS: (0.24, 0.32), Tissue.NUCLEUS: (0.3, 0.4), Tissue.NUCLEUS_DEGENERATED: (0.24, 0.32),
    Tissue.CSF: (0.06, 0.14), Tissue.CORD: (0.35, 0.45), Tissue.EPIDURAL_FAT: (0.8, 0.95),
    Tissue.LIGAMENT: (0.04, 0.1), Tissue.VESSEL: (0.02, 0.1), Tissue.MODIC1: (0.2, 0.3),
    Tissue.MODIC2: (0.85, 1.0), Tissue.SCLEROSIS: (0.05, 0.12), Tissue.HERNIA: (0.28, 0.38),
    Tissue.POSTERIOR_MARROW: (0.5, 0.66), Tissue.NERVE: (0.3, 0.4), Tissue.FLUID: (0.08, 0.16),
    Tissue.SKIN: (0.3, 0.4),
}
TEXTURE = {Tissue.MARROW: 0.12, Tissue.POSTERIOR_MARROW: 0.1, Tissue.BOWEL: 0.3, Tissue.FAT: 0.05,
           Tissue.MUSCLE: 0.08, Tissue.MODIC1: 0.12, Tissue.MODIC2: 0.12, Tissue.LUNG: 0.5, Tissue.FLUID: 0.05,
           Tissue.NUCLEUS: 0.05, Tissue.HERNIA: 0.1, Tissue.CORD: 0.04}


@dataclass
class Contrast:
    weighting: str  # "T1" | "T2"
    lut: np.ndarray  # (NUM_TISSUES,) float32 signal per tissue
    texture: np.ndarray  # (NUM_TISSUES,) texture amplitude per tissue


def draw_contrast(weighting: str, rng: np.random.Generator) -> Contrast:
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
    tex = np.zeros(NUM_TISSUES, np.float32)
    for tissue, amp in TEXTURE.items():
        tex[tissue] = amp * rng.uniform(0.6, 1.4)
    return Contrast(weighting, lut, tex)


def _smooth_2d(shape: tuple[int, int], rng: np.random.Generator, cell: float) -> np.ndarray:
    coarse = (max(2, int(shape[0] / cell) + 2), max(2, int(shape[1] / cell) + 2))
    field = rng.standard_normal(coarse).astype(np.float32)
    return zoom(field, (shape[0] / coarse[0], shape[1] / coarse[1]), order=1, grid_mode=False)[:shape[0], :shape[1]]


def texture_field(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth zero-mean noise on a (z, y, x) grid, built from three 2D fields (one per plane).

    A true 3D field costs a second per study at this size; the sum of plane fields varies in every
    direction and differs from slice to slice, which is all the texture has to do.
    """
    nz, ny, nx = shape
    zy = _smooth_2d((nz, ny), rng, 3.0) + 0.6 * _smooth_2d((nz, ny), rng, 10.0)
    zx = _smooth_2d((nz, nx), rng, 3.0)
    yx = _smooth_2d((ny, nx), rng, 3.0)
    field = zy[:, :, None] * 0.75 + (zx[:, None, :] + yx[None, :, :]) * 0.45
    return field


def render_tissue(tissue: np.ndarray, contrast: Contrast, texture: np.ndarray) -> np.ndarray:
    """Signal of each voxel before acquisition effects (texture is shared by T1 and T2)."""
    base = contrast.lut[tissue]
    amp = contrast.texture[tissue]
    return base * (1.0 + amp * texture)


def partial_volume(volume: np.ndarray, thickness: float, x_spacing: float) -> np.ndarray:
    """Average over the slice thickness along the left-right (sagittal normal) axis of the fine grid."""
    size = max(1, int(round(thickness / x_spacing)))
    return uniform_filter1d(volume, size, axis=2, mode="nearest") if size > 1 else volume


def resample(volume: sitk.Image, stack: SliceStack, interpolator: int) -> np.ndarray:
    """Sample a fine image on the series grid; returns (slices, rows, cols) sorted along the normal."""
    ref = stack.reference()
    out = sitk.Resample(volume, ref, sitk.Transform(), interpolator, 0.0, volume.GetPixelID())
    return sitk.GetArrayFromImage(out)


def bias_field(stack: SliceStack, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Receive-coil sensitivity: brighter near the posterior coil, smooth elsewhere."""
    rows, cols = stack.rows, stack.cols
    v, u = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
    posterior = float(np.sign(stack.row_dir[1])) * u  # +1 at the patient's back for sagittal planes
    c = rng.normal(0, 1, 4)
    log = strength * (0.8 * posterior + 0.3 * c[0] * v + 0.2 * c[1] * u * v + 0.2 * c[2] * v ** 2 - 0.2 * u ** 2)
    field = np.exp(log).astype(np.float32)
    slope = rng.uniform(-0.04, 0.04)
    per_slice = 1.0 + slope * np.linspace(-1, 1, stack.num_slices)
    return per_slice[:, None, None].astype(np.float32) * field[None]


def acquire(image: np.ndarray, stack: SliceStack, rng: np.random.Generator, noise: tuple[float, float],
            bias: tuple[float, float], scale: float) -> np.ndarray:
    """Bias field, Rician noise and scaling to scanner integers (uint16, 12 bits used)."""
    img = image * bias_field(stack, rng, rng.uniform(*bias))
    sigma = rng.uniform(*noise)
    real = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(img.shape, dtype=np.float32)
    mag = np.sqrt(real * real + imag * imag)
    return np.clip(mag * scale, 0, 4095).astype(np.uint16)


def to_sitk(volume: np.ndarray, origin: np.ndarray, spacing: tuple[float, float, float]) -> sitk.Image:
    img = sitk.GetImageFromArray(volume)
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetSpacing(tuple(float(v) for v in spacing))
    return img
