"""What a synthetic study may look like: every random range in one dataclass.

The defaults are the "mid range" that keeps generation near one study per second per core; tests shrink
matrices and slice counts through the same fields, so the code path they exercise is the real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.errors import SynthError

DEFAULT_SPIDER_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "spider_masks"


@dataclass(frozen=True)
class SynthConfig:
    # anatomy source: None = SPIDER masks when the folder exists, else procedural
    use_spider: bool | None = None
    spider_dir: Path | None = None
    spider_fraction: float = 0.6  # share of studies built on a SPIDER mask when masks are used
    # findings
    finding_prevalence: float = 0.25  # probability of a finding per eligible level
    normal_fraction: float = 0.2  # share of studies with no finding at all
    degenerated_disc_probability: float = 0.08  # dark nucleus without a reportable finding (a distractor)
    transitional_probability: float = 0.08  # sacralised L5 or lumbarised S1
    # series
    include_axial: bool = True
    include_localizer: bool = True
    matrix: tuple[int, int] = (320, 448)  # sagittal in-plane matrix range (issue: 256-768)
    slices: tuple[int, int] = (11, 17)  # sagittal slice-count range (issue: 9-21)
    slice_thickness: tuple[float, float] = (3.0, 5.0)  # mm
    fov: tuple[float, float] = (260.0, 340.0)  # sagittal field of view, mm
    pixel_spacing: tuple[float, float] = (0.3, 1.0)  # allowed in-plane spacing, mm
    axial_matrix: tuple[int, int] = (256, 320)
    axial_slices: tuple[int, int] = (12, 20)
    localizer_matrix: int = 256
    render_spacing: float = 0.9  # in-plane spacing of the fine grid the anatomy is drawn on, mm
    oblique_probability: float = 0.5  # slightly off-axis sagittal planes
    max_oblique_deg: float = 4.0
    noise: tuple[float, float] = (0.01, 0.035)  # Rician sigma as a fraction of the brightest tissue
    bias: tuple[float, float] = (0.1, 0.45)  # strength of the coil sensitivity field
    random_contrast: float = 0.0  # share of sagittal series rendered with fully random tissue signals

    def __post_init__(self) -> None:
        for name in ("matrix", "slices", "slice_thickness", "fov", "pixel_spacing", "axial_matrix",
                     "axial_slices", "noise", "bias"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise SynthError(f"SynthConfig.{name} must be an increasing range of non-negative values")
        if not 0.0 <= self.finding_prevalence <= 1.0:
            raise SynthError("SynthConfig.finding_prevalence must lie in [0, 1]")
        if not 0.0 <= self.normal_fraction <= 1.0:
            raise SynthError("SynthConfig.normal_fraction must lie in [0, 1]")
        if not 0.0 <= self.random_contrast <= 1.0:
            raise SynthError("SynthConfig.random_contrast must lie in [0, 1]")
        if self.slices[0] < 3:
            raise SynthError("SynthConfig.slices needs at least 3 slices per sagittal series")

    def resolved_spider_dir(self) -> Path | None:
        """The SPIDER folder to draw masks from, or None for fully procedural spines."""
        if self.use_spider is False:
            return None
        folder = Path(self.spider_dir) if self.spider_dir is not None else DEFAULT_SPIDER_DIR
        has_masks = folder.is_dir() and any(folder.glob("*.mha"))
        if self.use_spider and not has_masks:
            raise SynthError(f"use_spider is set but {folder} holds no SPIDER masks (*.mha)")
        return folder if has_masks else None


SMALL_TEST_CONFIG = dict(matrix=(160, 192), slices=(9, 11), axial_matrix=(128, 128), axial_slices=(6, 8),
                         localizer_matrix=128, render_spacing=1.2, pixel_spacing=(0.3, 2.0))
"""Overrides that make a study small enough for unit tests (still within every DICOM rule)."""
