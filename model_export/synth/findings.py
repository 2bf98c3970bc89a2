"""Abnormalities: which levels get which finding, and the label-map edits that make them visible.

Every finding is an edit of the healthy map at one requested level and nowhere else: herniated
material keeps the label of its own disc (so each disc stays one connected structure), a Schmorl's
node is disc material inside the adjacent vertebral body, and vertebral degeneration changes marrow
tissue (Modic types 1-3) and adds osteophytes that carry the vertebra's label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt
from scipy.ndimage import label as cc_label

from .anatomy import body_mask
from .canvas import Canvas, VolumeCanvas
from .config import SynthConfig
from .spine import Segment, SpineModel
from .tissues import Tissue

DISC_FINDINGS = ("disc_bulging", "disc_protrusion", "disc_extrusion", "schmorl_node")
VERTEBRA_FINDINGS = ("vertebral_degeneration",)
LEVEL_WEIGHT = {"L5/S1": 1.4, "L4/L5": 1.6, "L3/L4": 1.0, "L2/L3": 0.7, "L1/L2": 0.6, "T12/L1": 0.6,
                "L5": 1.3, "L4": 1.3, "L3": 1.0, "L2": 0.8, "L1": 0.8, "T12": 0.7}


@dataclass
class FindingSpec:
    finding: str
    level: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"finding": self.finding, "level": self.level, **self.details}


def sample_findings(eligible_discs: list[str], eligible_vertebrae: list[str], config: SynthConfig,
                    rng: np.random.Generator) -> list[FindingSpec]:
    if rng.random() < config.normal_fraction:
        return []
    out: list[FindingSpec] = []
    p = config.finding_prevalence
    for level in eligible_discs:
        if rng.random() >= min(1.0, p * LEVEL_WEIGHT.get(level, 0.4)):
            continue
        kind = str(rng.choice(DISC_FINDINGS, p=[0.35, 0.3, 0.15, 0.2]))
        out.append(_disc_finding(kind, level, rng))
        if kind != "schmorl_node" and rng.random() < 0.15:
            out.append(_disc_finding("schmorl_node", level, rng))
    for level in eligible_vertebrae:
        if rng.random() < min(1.0, 0.6 * p * LEVEL_WEIGHT.get(level, 0.5)):
            out.append(FindingSpec("vertebral_degeneration", level, {
                "modic_type": int(rng.choice([1, 2, 3], p=[0.35, 0.5, 0.15])),
                "endplate": str(rng.choice(["superior", "inferior", "both"])),
                "band_mm": round(float(rng.uniform(4, 10)), 1),
                "osteophytes": bool(rng.random() < 0.7),
            }))
    return out


def _disc_finding(kind: str, level: str, rng: np.random.Generator) -> FindingSpec:
    side = float(rng.choice([0.0, 0.0, -1.0, 1.0]))
    position = {0.0: "central", -1.0: "right paracentral", 1.0: "left paracentral"}[side]
    if kind == "disc_bulging":
        return FindingSpec(kind, level, {"extent_mm": round(float(rng.uniform(2.5, 4.5)), 1)})
    if kind == "disc_protrusion":
        return FindingSpec(kind, level, {"depth_mm": round(float(rng.uniform(3.5, 6.5)), 1),
                                         "position": position, "side": side})
    if kind == "disc_extrusion":
        return FindingSpec(kind, level, {"depth_mm": round(float(rng.uniform(5.5, 9.0)), 1),
                                         "position": position, "side": side,
                                         "migration": str(rng.choice(["cranial", "caudal"])),
                                         "migration_mm": round(float(rng.uniform(6, 14)), 1)})
    return FindingSpec(kind, level, {"endplate": str(rng.choice(["cranial", "caudal"])),
                                     "depth_mm": round(float(rng.uniform(3.5, 6.5)), 1),
                                     "offset_mm": round(float(rng.uniform(-8, 8)), 1)})


def degenerate(spine: SpineModel, findings: list[FindingSpec], config: SynthConfig,
               rng: np.random.Generator) -> set[str]:
    """Dark, narrowed discs where findings make them likely (and rarely elsewhere, as a distractor).

    Narrowing moves every structure above the disc down, before anything is painted.
    """
    dark: set[str] = set()
    herniated = {f.level for f in findings if f.finding in DISC_FINDINGS[:3]}
    degenerated_vertebrae = {f.level for f in findings if f.finding == "vertebral_degeneration"}
    for i, seg in enumerate(spine.segments):
        if seg.kind != "disc":
            continue
        below, above = spine.segments[i - 1], spine.segments[i + 1] if i + 1 < len(spine.segments) else None
        near = below.name in degenerated_vertebrae or (above is not None and above.name in degenerated_vertebrae)
        chance = 0.8 if seg.name in herniated else 0.6 if near else config.degenerated_disc_probability
        if rng.random() < chance:
            dark.add(seg.name)
            if spine.spider is None and rng.random() < 0.5:  # a real mask keeps its own disc heights
                loss = seg.height * rng.uniform(0.15, 0.35)
                seg.s1 -= loss
                for later in spine.segments[i + 1:]:
                    later.s0 -= loss
                    later.s1 -= loss
    return dark


def paint_findings(canvas: Canvas, spine: SpineModel, findings: list[FindingSpec]) -> None:
    for f in findings:
        seg = spine.segment(f.level)
        guard = _Attachment(canvas, spine, seg)
        _paint_one(canvas, spine, seg, f)
        guard.detach_islands()


class _Attachment:
    """Undo any part of an edit that ends up detached from its structure.

    On a procedural spine the edits are built to touch their structure; on a real SPIDER mask the
    endplates and margins lie only near where the segment model puts them, so a bulge or a spur can
    land a voxel away. Such islands would be labelled voxels no reader would assign to the level.
    """

    def __init__(self, canvas: Canvas, spine: SpineModel, seg: Segment) -> None:
        self.label = seg.label
        self.region = None
        if isinstance(canvas, VolumeCanvas) and seg.label:
            self.region = canvas.region((seg.s0 - 40, seg.s1 + 40), (-seg.half_depth - 40, seg.half_depth + 40),
                                        (spine.x0 - seg.half_width - 30, spine.x0 + seg.half_width + 30))
        if self.region is not None:
            self.labels0 = self.region.labels().copy()
            self.tissues0 = self.region.tissues().copy()

    def detach_islands(self) -> None:
        if self.region is None:
            return
        labels, tissues = self.region.labels(), self.region.tissues()
        pieces, n = cc_label(labels == self.label, structure=np.ones((3, 3, 3)))
        if n <= 1:
            return
        keep = np.argmax(np.bincount(pieces.ravel())[1:]) + 1
        undo = (pieces > 0) & (pieces != keep) & (self.labels0 != labels)
        labels[undo] = self.labels0[undo]
        tissues[undo] = self.tissues0[undo]


def _paint_one(canvas: Canvas, spine: SpineModel, seg: Segment, f: FindingSpec) -> None:
    if f.finding == "disc_bulging":
        _paint_bulge(canvas, spine, seg, f.details)
    elif f.finding in ("disc_protrusion", "disc_extrusion"):
        _paint_herniation(canvas, spine, seg, f.details, extruded=f.finding == "disc_extrusion")
    elif f.finding == "schmorl_node":
        _paint_schmorl(canvas, spine, seg, f.details)
    elif f.finding == "vertebral_degeneration":
        _paint_degeneration(canvas, spine, seg, f.details)


def _paint_bulge(canvas: Canvas, spine: SpineModel, disc: Segment, d: dict[str, Any]) -> None:
    a, b, g = disc.half_depth, disc.half_width, d["extent_mm"]
    reg = canvas.region((disc.s0 - 2, disc.s1 + 2), (-a - g - 1, a + g + 1), (spine.x0 - b - g, spine.x0 + b + g))
    if reg is None:
        return
    from .anatomy import radial

    half = disc.height / 2 + 1.5
    profile = np.clip(1.0 - ((reg.s - disc.centre) / half) ** 2, 0, 1)
    scale = np.where(reg.t > 0, 1.0, 0.6)  # bulges mostly backwards and sideways
    r = radial(reg.t, reg.x - spine.x0, a + g * profile * scale, b + g * profile)
    free = (reg.labels() == 0) | (reg.labels() == disc.label)
    reg.put((r < 1.0) & free & (profile > 0), Tissue.ANNULUS, disc.label)


def _paint_herniation(canvas: Canvas, spine: SpineModel, disc: Segment, d: dict[str, Any], extruded: bool) -> None:
    a = disc.half_depth
    depth = d["depth_mm"]
    xc = spine.x0 + d["side"] * spine.canal_half_width * 0.45
    shift = 0.0
    if extruded:
        shift = d["migration_mm"] * (1 if d["migration"] == "cranial" else -1)
    s_lo = disc.centre - abs(shift) - disc.height - 6
    s_hi = disc.centre + abs(shift) + disc.height + 6
    reg = canvas.region((s_lo, s_hi), (a - 9, a + depth + 3), (xc - 12, xc + 12))
    if reg is None:
        return
    half = disc.height / 2 + 0.5
    dxn = (reg.x - xc)
    free = reg.labels() == 0
    if not extruded:  # base (about the disc height and 14-18 mm wide) wider than the depth
        prof = np.clip(1 - (dxn / 8.0) ** 2, 0, 1) * np.clip(1 - ((reg.s - disc.centre) / half) ** 2, 0, 1)
        mask = (reg.t > a - 8) & (reg.t < a + depth * np.sqrt(prof)) & (prof > 0)
    else:  # narrow neck through the annulus, a larger mass in the canal displaced up or down
        neck = (((reg.s - disc.centre) / (half * 0.6)) ** 2 + (dxn / 4.0) ** 2 < 1) & (reg.t > a - 8)
        neck = neck & (reg.t < a + 2.5)
        centre_s = disc.centre + shift * 0.6
        mass = (((reg.s - centre_s) / (abs(shift) * 0.6 + 4.0)) ** 2 + ((reg.t - a - 1 - depth / 2) / (depth / 2)) ** 2
                + (dxn / 6.0) ** 2) < 1
        mask = neck | mass
    # starting inside the disc keeps the material attached wherever the real posterior margin lies;
    # only what lies outside the disc changes tissue
    reg.put(mask & free, Tissue.HERNIA, disc.label)


def _paint_schmorl(canvas: Canvas, spine: SpineModel, disc: Segment, d: dict[str, Any]) -> None:
    below, above = spine.neighbours(disc)
    body = above if d["endplate"] == "cranial" else below
    if body is None or body.kind == "disc" or not body.label:
        return
    depth = d["depth_mm"]
    surface = disc.s1 if d["endplate"] == "cranial" else disc.s0
    sign = 1.0 if d["endplate"] == "cranial" else -1.0
    centre_s = surface + sign * (depth / 2)
    tc = d["offset_mm"] * 0.5
    reg = canvas.region((centre_s - depth - 4, centre_s + depth + 4), (tc - 10, tc + 10),
                        (spine.x0 - 10, spine.x0 + 10))
    if reg is None:
        return
    dist = np.sqrt(((reg.s - centre_s) / (depth / 2 + 1.2)) ** 2 + ((reg.t - tc) / 5.0) ** 2
                   + ((reg.x - spine.x0) / 5.5) ** 2)
    reg.put(dist < 1.35, Tissue.SCLEROSIS, where_label=body.label)  # sclerotic rim stays vertebra
    stalk = (np.abs(reg.s - (surface + sign * (depth / 2 - 3))) < depth / 2 + 3) & (
        ((reg.t - tc) / 3.0) ** 2 + ((reg.x - spine.x0) / 3.5) ** 2 < 1)  # reaches the real endplate
    node = (dist < 1.0) | stalk
    labels = reg.labels()
    reg.put(node & ((labels == body.label) | (labels == disc.label)), Tissue.HERNIA, disc.label)


def _paint_degeneration(canvas: Canvas, spine: SpineModel, seg: Segment, d: dict[str, Any]) -> None:
    a, b = seg.half_depth, seg.half_width
    reg = canvas.region((seg.s0 - 6, seg.s1 + 6), (-a - 8, a + 2), (spine.x0 - b - 4, spine.x0 + b + 4))
    if reg is None:
        return
    inside, shell = body_mask(reg, spine, seg, a, b)
    band = d["band_mm"]
    tissue = {1: Tissue.MODIC1, 2: Tissue.MODIC2, 3: Tissue.SCLEROSIS}[d["modic_type"]]
    i = spine.segments.index(seg)
    below = spine.segments[i - 1] if i > 0 else None
    above = spine.segments[i + 1] if i + 1 < len(spine.segments) else None
    discs = [g.label for g in (below, above) if g is not None and g.kind == "disc" and g.label]
    wavy = band * (0.7 + 0.3 * np.cos(reg.t / a * 2))
    labels = reg.labels()
    plates = [g.label for g, side in ((below, "inferior"), (above, "superior"))
              if g is not None and g.label and d["endplate"] in (side, "both")]
    if labels.ndim == 3 and plates:  # measured from the real endplate (a SPIDER body need not match s0, s1)
        sz, sy, sx = canvas.spacing[2], canvas.spacing[1], canvas.spacing[0]  # type: ignore[attr-defined]
        dist = distance_transform_edt(~np.isin(labels, plates), sampling=(sz, sy, sx))
        near = dist < wavy
        keep = np.isin(reg.tissues(), (Tissue.MARROW, Tissue.POSTERIOR_MARROW)) & (reg.t < a)
        reg.put(near & keep, tissue, where_label=seg.label)
    else:
        near = np.zeros(inside.shape, bool)
        if d["endplate"] in ("inferior", "both"):
            near = near | (reg.s < seg.s0 + wavy)
        if d["endplate"] in ("superior", "both"):
            near = near | (reg.s > seg.s1 - wavy)
        reg.put(inside & ~shell & near, tissue, where_label=seg.label)
    if d["osteophytes"]:  # anterior beaks at both endplate corners, pointing towards the disc
        for s_e, direction in ((seg.s0, -1.0), (seg.s1, 1.0)):
            length = 5.0
            along = np.clip((-reg.t - a + 3) / length, 0, 1)  # 0 at the body, 1 at the tip
            s_tip = s_e + direction * 3.0 * along
            beak = (reg.t < -a + 7) & (reg.t > -a - length) & (np.abs(reg.s - s_tip) < 2.2 * (1 - along) + 0.6)
            beak = beak & (np.abs(reg.x - spine.x0) < 0.55 * b)
            # a spur grows from the rim over the annulus of the adjacent disc and out into soft tissue
            labels = reg.labels()
            allowed = (labels == 0) | (labels == seg.label) | np.isin(labels, discs)
            reg.put(beak & allowed, Tissue.CORTEX, seg.label)
