"""One synthetic study in memory: anatomy, findings, planned series, rendered images and ground truth.

:func:`synthesize_case` is the fast path for training (numpy arrays, nothing on disk); output.py writes
the same case as a DICOM study. Every random choice draws from a named child of the seed's
SeedSequence, so changing how one stage consumes randomness does not reshuffle the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import find_objects, uniform_filter1d
from scipy.ndimage import label as cc_label

from service.ontology import DEFAULT_ONTOLOGY

from .anatomy import paint_spine
from .canvas import PointCanvas, VolumeCanvas
from .config import SynthConfig
from .dicom_io import StudyInfo, quantise, uid
from .findings import (
    DISC_FINDINGS,
    VERTEBRA_FINDINGS,
    FindingSpec,
    degenerate,
    paint_findings,
    sample_findings,
)
from .geometry import SliceStack, plan_axial, plan_localizer, plan_sagittal
from .protocols import Protocol, axial_t2, localizer, sagittal_t1, sagittal_t2
from .render import acquire, apply_texture, draw_contrast, partial_volume_sample, resample, to_sitk
from .spine import SpineModel, procedural_spine

STREAMS = ("anatomy", "planning", "findings", "study", "sag_t2", "sag_t1", "ax_t2", "localizer", "texture", "report")


@dataclass
class SynthSeries:
    name: str
    protocol: Protocol
    stacks: list[SliceStack]  # one per orientation block (three for a 3-plane localizer)
    pixels: list[np.ndarray]  # uint16 (slices, rows, cols) per block, sorted along the normal
    labels: np.ndarray | None = None  # uint8 (slices, rows, cols) on the same grid, sagittal series only
    series_uid: str = ""
    number: int = 0

    @property
    def image(self) -> np.ndarray:
        return self.pixels[0]

    def label_image(self) -> sitk.Image:
        """The label map with exactly the geometry ImageSeriesReader gives the written series."""
        if self.labels is None:
            raise ValueError(f"series {self.name} has no label map")
        img = sitk.GetImageFromArray(self.labels)
        img.CopyInformation(quantise(self.stacks[0]).reference())
        return img


@dataclass
class SynthCase:
    seed: int
    config: SynthConfig
    study: StudyInfo
    spine: SpineModel
    findings: list[FindingSpec]
    series: dict[str, SynthSeries]
    truth: dict[str, Any] = field(default_factory=dict)

    @property
    def t2(self) -> np.ndarray:
        return self.series["sag_t2"].image

    @property
    def t1(self) -> np.ndarray:
        return self.series["sag_t1"].image


def largest_components(labels: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected piece of every label; sampling thin rims and osteophyte tips on a
    coarse series grid can leave one-voxel islands that belong to no structure a reader would outline."""
    out = labels.copy()
    boxes = find_objects(labels)
    for value, box in enumerate(boxes, start=1):
        if box is None:
            continue
        crop = out[box]
        pieces, n = cc_label(crop == value, structure=np.ones((3, 3, 3)))
        if n > 1:
            keep = np.argmax(np.bincount(pieces.ravel())[1:]) + 1
            crop[(pieces > 0) & (pieces != keep)] = 0
    return out


def _rngs(seed: int) -> dict[str, np.random.Generator]:
    children = np.random.SeedSequence([seed, 0x5EED]).spawn(len(STREAMS))
    return {name: np.random.default_rng(c) for name, c in zip(STREAMS, children, strict=True)}


def _choose_anatomy(seed: int, config: SynthConfig, rng: np.random.Generator) -> tuple[SpineModel, dict]:
    folder = config.resolved_spider_dir()
    use = folder is not None and (config.use_spider is True or rng.random() < config.spider_fraction)
    if use:
        from .spider import spider_spine

        return spider_spine(folder, rng, config.transitional_probability)
    return procedural_spine(rng, config.transitional_probability), {}


def eligible_levels(spine: SpineModel, stacks: list[SliceStack]) -> tuple[list[str], list[str]]:
    """Levels fully inside every sagittal field of view: the only ones that may carry findings."""
    discs, vertebrae = [], []
    for seg in spine.segments:
        if not seg.label or seg.kind == "sacrum":
            continue
        corners = [spine.patient_point(s, t) for s in (seg.s0 - 3, seg.s1 + 3) for t in (-seg.half_depth - 4,
                                                                                        seg.half_depth + 12)]
        if all(st.contains(c, margin=4.0) for st in stacks for c in corners):
            (discs if seg.kind == "disc" else vertebrae).append(seg.name)
    return discs, vertebrae


def _fine_grid(spine: SpineModel, stacks: list[SliceStack], config: SynthConfig) -> VolumeCanvas:
    corners = np.concatenate([st.corners() for st in stacks])
    lo = corners.min(axis=0) - 2.0
    hi = corners.max(axis=0) + 2.0
    dx = float(np.clip(min(st.thickness for st in stacks) / 2.0, 0.8, 2.5))  # two samples across a slice
    dyz = config.render_spacing
    x = np.arange(lo[0], hi[0] + dx, dx, dtype=np.float32)
    y = np.arange(lo[1], hi[1] + dyz, dyz)
    z = np.arange(lo[2], hi[2] + dyz, dyz)
    zz, yy = np.meshgrid(z, y, indexing="ij")
    s2d, t2d = spine.st_of(yy, zz)
    return VolumeCanvas(s2d, t2d, x, y, z, (dx, dyz, dyz))


def series_box(canvas: VolumeCanvas, stack: SliceStack) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """The (z, y, x) index box of the fine grid that one sagittal series samples, and its origin.

    The fine grid spans both sagittal series, whose fields of view differ by up to a quarter; rendering
    each from its own box saves that share of the per-series passes. The margin keeps the slab filter
    and the interpolation on the box exactly what they are on the whole grid.
    """
    spacing = np.asarray(canvas.spacing)
    margin = 2 + int(np.ceil(stack.thickness / 4 / spacing[0]))  # slab filter radius + interpolation
    corners = stack.corners()
    lo = np.floor((corners.min(axis=0) - canvas.origin) / spacing).astype(int) - margin
    hi = np.ceil((corners.max(axis=0) - canvas.origin) / spacing).astype(int) + margin + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, canvas.tissue.shape[::-1])
    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    return box, canvas.origin + lo * spacing


def _point_canvas(spine: SpineModel, pts: np.ndarray) -> PointCanvas:
    s, t = spine.st_of(pts[..., 1], pts[..., 2])
    return PointCanvas(s, t, pts)


@dataclass
class CasePlan:
    """Everything decided before painting: anatomy, sagittal planning, findings, dark discs."""

    seed: int
    spine: SpineModel
    sag_t2: SliceStack
    sag_t1: SliceStack
    findings: list[FindingSpec]
    degenerated: set[str]
    rng: dict[str, np.random.Generator]


def plan_case(seed: int, config: SynthConfig) -> CasePlan:
    rng = _rngs(seed)
    spine, limits = _choose_anatomy(seed, config, rng["anatomy"])
    sag_t2, sag_t1 = plan_sagittal(spine, config, rng["planning"], limits)
    discs, vertebrae = eligible_levels(spine, [sag_t2, sag_t1])
    findings = sample_findings(discs, vertebrae, config, rng["findings"])
    dark = degenerate(spine, findings, config, rng["findings"])
    return CasePlan(seed, spine, sag_t2, sag_t1, findings, dark, rng)


def healthy_canvas(plan: CasePlan, config: SynthConfig) -> VolumeCanvas:
    """The fine grid under both sagittal series with the spine painted, before any abnormality."""
    canvas = _fine_grid(plan.spine, [plan.sag_t2, plan.sag_t1], config)
    paint_spine(canvas, plan.spine, plan.degenerated)
    return canvas


def synthesize_case(seed: int, config: SynthConfig | None = None) -> SynthCase:
    config = config or SynthConfig()
    plan = plan_case(seed, config)
    rng, spine, findings, dark = plan.rng, plan.spine, plan.findings, plan.degenerated
    sag_t2, sag_t1 = plan.sag_t2, plan.sag_t1
    study = StudyInfo.draw(seed, rng["study"])
    canvas = healthy_canvas(plan, config)
    paint_findings(canvas, spine, findings)

    series: dict[str, SynthSeries] = {}
    for name, stack, weighting in (("sag_t2", sag_t2, "T2"), ("sag_t1", sag_t1, "T1")):
        r = rng[name]
        protocol = sagittal_t2(r, stack.cols) if weighting == "T2" else sagittal_t1(r, stack.cols)
        contrast = draw_contrast(weighting, r, config.random_contrast)
        box, origin = series_box(canvas, stack)
        fine_tissue = canvas.tissue[box]
        image = partial_volume_sample(contrast.lut[fine_tissue], origin, canvas.spacing, stack)
        # label and tissue travel together: one nearest-neighbour resample per series gives both
        packed = to_sitk((canvas.label[box].astype(np.uint16) << 8) | fine_tissue, origin, canvas.spacing)
        sampled = resample(packed, stack, sitk.sitkNearestNeighbor)
        tissue = (sampled & 255).astype(np.uint8)
        image = apply_texture(image, tissue, contrast, rng["texture"])
        pixels = acquire(image, stack, r, config.noise, config.bias, r.uniform(1500, 3800))
        labels = largest_components((sampled >> 8).astype(np.uint8))
        series[name] = SynthSeries(name, protocol, [stack], [pixels], labels)
    if config.include_axial:
        r = rng["ax_t2"]
        stack = plan_axial(spine, config, r)
        series["ax_t2"] = SynthSeries("ax_t2", axial_t2(r), [stack],
                                      _render_points(spine, findings, dark, [stack], "T2", r, config))
    if config.include_localizer:
        r = rng["localizer"]
        stacks = plan_localizer(spine, config, r)
        # a 40-50 cm field on 256 pixels: a third of that would show 5 mm stair steps on every edge
        px = _render_points(spine, findings, dark, stacks, "T1", r, config, factor=2)
        series["localizer"] = SynthSeries("localizer", localizer(r), stacks, px)
    order = ["localizer", "sag_t2", "sag_t1", "ax_t2"]
    for number, name in enumerate([n for n in order if n in series], start=1):
        series[name].series_uid = uid(seed, "series", name)
        series[name].number = number
    case = SynthCase(seed, config, study, spine, findings, series)
    case.truth = build_truth(case)
    return case


def _upsample(small: np.ndarray, factor: int, rows: int, cols: int) -> np.ndarray:
    """In-plane upsampling by repetition then a box of the same width (piecewise linear), edge-padded.
    Rows are repeated and smoothed before the columns are repeated: one full-size pass fewer."""
    big = uniform_filter1d(np.repeat(small, factor, axis=1), factor, axis=1)
    big = uniform_filter1d(np.repeat(big, factor, axis=2), factor, axis=2)
    pad = ((0, 0), (0, max(0, rows - big.shape[1])), (0, max(0, cols - big.shape[2])))
    return np.pad(big, pad, mode="edge")[:, :rows, :cols]


def _render_points(spine: SpineModel, findings: list[FindingSpec], dark: set[str], stacks: list[SliceStack],
                   weighting: str, rng: np.random.Generator, config: SynthConfig, factor: int = 3
                   ) -> list[np.ndarray]:
    """Render non-sagittal series straight from the anatomy, at 1/factor of their matrix, then upsample.

    These series exist to exercise series selection and to look plausible, not to train on, so they
    are drawn at pixel centres of a coarser grid (no partial volume) to keep generation fast. For the
    axial series a third of the matrix (0.6-1 mm pixels drawn at 2-3 mm) still shows what it is for,
    at half the cost of drawing half the matrix. All blocks (the three planes of a localizer) are
    painted as one set of points.
    """
    coarse = [SliceStack(st.rows // factor, st.cols // factor, st.pixel_spacing * factor, st.row_dir, st.col_dir,
                         st.centres, st.thickness) for st in stacks]
    pts = [c.points()[0] for c in coarse]
    canvas = _point_canvas(spine, np.concatenate([p.reshape(-1, 3) for p in pts]))
    paint_spine(canvas, spine, dark)
    paint_findings(canvas, spine, findings)
    tissue, _ = canvas.arrays()
    contrast = draw_contrast(weighting, rng)
    out, start = [], 0
    for st, p in zip(stacks, pts, strict=True):
        n = int(np.prod(p.shape[:3]))
        small = contrast.lut[tissue[start:start + n]].reshape(p.shape[:3])
        start += n
        image = _upsample(small, factor, st.rows, st.cols)
        out.append(acquire(image, st, rng, config.noise, (0.05, 0.2), rng.uniform(1500, 3800)))
    return out


def build_truth(case: SynthCase) -> dict[str, Any]:
    """The ground truth of a case as written to truth.json."""
    present: set[int] = set()
    series_truth: dict[str, Any] = {}
    for name, s in case.series.items():
        entry = {"series_instance_uid": s.series_uid, "series_number": s.number,
                 "series_description": s.protocol.description,
                 "label_file": f"labels/{name}.nii.gz" if s.labels is not None else None,
                 "num_slices": int(sum(st.num_slices for st in s.stacks)), "rows": s.stacks[0].rows,
                 "cols": s.stacks[0].cols, "weighting": s.protocol.weighting}
        series_truth[name] = entry
        if s.labels is not None:
            present |= {int(v) for v in np.unique(s.labels) if v}
    levels: dict[str, dict[str, bool]] = {}
    for structure in DEFAULT_ONTOLOGY.caudal_to_cranial():
        if structure.label not in present:
            continue
        if structure.kind == "disc":
            levels[structure.level] = {k: False for k in DISC_FINDINGS}
        elif structure.kind == "vertebra":
            levels[structure.level] = {k: False for k in VERTEBRA_FINDINGS}
    for f in case.findings:
        levels[f.level][f.finding] = True
    findings = [{k: v for k, v in f.as_dict().items() if k != "side"} for f in case.findings]
    return {
        "study_instance_uid": case.study.study_uid,
        "seed": case.seed,
        "source": case.spine.source,
        "synthetic": True,
        "transitional_anatomy": case.spine.transitional,
        "series": series_truth,
        "structures_present": sorted(present),
        "levels": levels,
        "findings": findings,
    }
