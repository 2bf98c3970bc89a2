"""Painting a healthy spine and the body around it onto a canvas, in curvilinear coordinates.

Order matters and is fixed: body and soft tissue, ligaments, discs, vertebral bodies, canal contents,
then posterior elements; abnormalities (findings.py) are painted afterwards as edits of this map.
Shapes are superellipses in (t, x) swept along s: cheap to evaluate, and they give the rounded
vertebral bodies, flat posterior walls and concave endplates of a real spine.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from .canvas import Canvas, Region, VolumeCanvas
from .spine import Segment, SpineModel
from .tissues import Tissue

CORTEX_MM = 1.3
SOFT_TISSUE_X_STEP_MM = 4.0


def half_depth_at(spine: SpineModel, s: np.ndarray) -> np.ndarray:
    """Half depth of the anterior column along s (smooth between segment centres)."""
    segs = [g for g in spine.segments if g.kind != "disc"]
    centres = [g.centre for g in segs]
    return np.interp(s, centres, [g.half_depth for g in segs]).astype(np.float32)


def radial(t: np.ndarray, x: np.ndarray, a: float, b: float, front_p: float = 2.4, back_p: float = 4.0
           ) -> np.ndarray:
    """Normalised superellipse radius of a vertebral cross-section: round in front, flat behind."""
    u = np.abs(t) / a
    v = np.abs(x) / b
    p = np.where(t < 0, front_p, back_p)
    return (u ** p + v ** p) ** (1.0 / p)


def body_axis_y(spine: SpineModel, z: np.ndarray) -> np.ndarray:
    """Patient y of the spine smoothed over about 10 cm, as a function of patient z."""
    order = np.argsort(spine.curve_yz[:, 1])
    zs = spine.curve_yz[order, 1]
    grid = np.arange(zs[0], zs[-1], 2.0)
    ys = gaussian_filter1d(np.interp(grid, zs, spine.curve_yz[order, 0]), 25.0, mode="nearest")
    return np.interp(z, grid, ys).astype(np.float32)


def paint_soft_tissue(canvas: Canvas, spine: SpineModel) -> None:
    """Skin-to-skin body: subcutaneous fat, back muscles, psoas, kidneys, abdomen or lung, vessels.

    On a volume canvas the soft tissue is evaluated on left-right planes about 4 mm apart and repeated
    between them: its boundaries across x are smooth on the scale of a 3-5 mm slice, and this is the
    costliest painter.
    """
    r = canvas.everything()
    k = max(1, int(round(SOFT_TISSUE_X_STEP_MM / canvas.spacing[0]))) if isinstance(canvas, VolumeCanvas) else 1
    if k > 1:
        xs = r.x[:, :, ::k] + np.float32(canvas.spacing[0] * (k - 1) / 2)
        coarse = _soft_tissue(spine, r.s, r.t, xs, r.y, r.z)
        r.fill(np.repeat(coarse, k, axis=2)[:, :, : r.x.shape[2]])
    else:
        r.fill(_soft_tissue(spine, r.s, r.t, r.x, r.y, r.z))


def _soft_tissue(spine: SpineModel, s: np.ndarray, t: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray
                 ) -> np.ndarray:
    """Terms that depend on (s, t) only are computed before being combined with x.

    On a volume canvas (s, t, y, z) vary over a (z, y) plane and x along the third axis, so every test
    is written as "a function of x against a bound from the plane" (an ellipse as (dx/w)^2 < 1 - (.)^2,
    a mask as a bound that nothing meets): one full-size comparison each instead of three or four.
    """
    f32 = np.float32
    never = f32(-1.0)  # a bound no square reaches
    dx = x - f32(spine.x0)
    adx = np.abs(dx)
    a = half_depth_at(spine, s)
    # the skin follows a heavily smoothed spine: the back is hollow at the lordosis, but less than the spine
    axis_y = body_axis_y(spine, z)
    back = axis_y + f32(16 + spine.canal_depth + spine.spinous_length + spine.muscle_depth + spine.fat_depth)
    thorax = s > spine.diaphragm_s
    front = axis_y - f32(spine.abdomen_depth) * np.where(z > spine.point(spine.diaphragm_s)[2], f32(1.1), f32(1.0))
    centre = f32(0.5) * (back + front)
    half_ap = f32(0.5) * (back - front)
    bw, fat = f32(spine.body_half_width), f32(spine.fat_depth)
    yc = y - centre
    body = (dx / bw) ** 2 <= f32(1.0) - (yc / half_ap) ** 2
    inner = (dx / (bw - fat)) ** 2 <= f32(1.0) - (yc / (half_ap - fat)) ** 2
    posterior = t > a * f32(0.6)
    content = np.where(posterior, np.uint8(Tissue.MUSCLE),
                       np.where(thorax, np.uint8(Tissue.LUNG), np.uint8(Tissue.BOWEL)))
    wall = (y < front + fat + f32(12)) & ~thorax  # anterior abdominal wall muscle, just inside the fat
    content = np.where(wall, np.uint8(Tissue.MUSCLE), content)
    # retroperitoneal fat around the front of the spine, psoas beside the lumbar bodies, kidneys
    retro_bound = np.where(t < a * f32(0.6), f32(1.0) - ((t + f32(0.3) * a) / (a + f32(28))) ** 2, never)
    retro = (dx / f32(75)) ** 2 < retro_bound
    kidney_s = (s > spine.diaphragm_s - 120) & (s < spine.diaphragm_s + 15)
    kidney_bound = np.where(kidney_s, f32(1.0) - ((t - f32(0.5) * a) / f32(28)) ** 2, never)
    kidney = ((adx - f32(70)) / f32(32)) ** 2 < kidney_bound
    lumbar = (s > 0) & (s < spine.diaphragm_s) & (t > -a - f32(12)) & (t < a * f32(0.5))
    psoas_w = f32(14) + f32(10) * np.clip((spine.diaphragm_s - s) / f32(max(spine.diaphragm_s, 1.0)), 0, 1)
    psoas_w = np.where(lumbar, psoas_w, f32(0))  # | |dx| - (a + 14) | < 0 never holds
    psoas = (adx > a + f32(14) - psoas_w) & (adx < a + f32(14) + psoas_w)
    vessels = np.zeros((), bool)
    for dx_c, radius, s_lo in ((12.0, 11.0, spine.aorta_bifurcation_s),
                               (-22.0, 10.0, spine.aorta_bifurcation_s - 10)):
        bound = np.where(s > s_lo, f32(radius ** 2) - (t + a + f32(radius + 3)) ** 2, never)
        vessels = vessels | ((dx - f32(dx_c)) ** 2 < bound)
    inside = np.where(vessels, np.uint8(Tissue.VESSEL),
                      np.where(psoas, np.uint8(Tissue.MUSCLE), np.where(retro, np.uint8(Tissue.FAT), content)))
    inside = np.where(kidney & ~psoas, np.uint8(Tissue.KIDNEY), inside)
    return np.where(inner, inside, np.where(body, np.uint8(Tissue.FAT), np.uint8(Tissue.AIR)))


def paint_ligaments(canvas: Canvas, spine: SpineModel) -> None:
    """Anterior and posterior longitudinal ligaments: thin dark bands along the column."""
    top = spine.segments[-1].s1
    reg = canvas.region((0.0, top), (-40.0, 40.0), (spine.x0 - 30, spine.x0 + 30))
    if reg is None:
        return
    a = half_depth_at(spine, reg.s)
    dx = np.abs(reg.x - spine.x0)
    pll = (reg.t > a - 0.5) & (reg.t < a + 1.2) & (dx < spine.canal_half_width)
    all_ = (reg.t < -a + 0.5) & (reg.t > -a - 1.5) & (dx < 14)
    reg.put(pll | all_, Tissue.LIGAMENT)


def paint_disc(canvas: Canvas, spine: SpineModel, disc: Segment, degenerated: bool) -> None:
    a, b = disc.half_depth, disc.half_width
    reg = canvas.region((disc.s0 - 2.5, disc.s1 + 2.5), (-a - 1, a + 1), (spine.x0 - b - 1, spine.x0 + b + 1))
    if reg is None:
        return
    dx = reg.x - spine.x0
    r = radial(reg.t, dx, a, b)
    dome = endplate_dome(r)  # the disc fills exactly the concave endplates and bevelled rims of its bodies
    inside = (r < 1.0) & (reg.s >= disc.s0 - dome) & (reg.s <= disc.s1 + dome)
    mid = disc.centre
    half = max(disc.height * 0.5, 0.5)
    nucleus = (((reg.s - mid) / (half * 0.7 + 0.3)) ** 2 + ((reg.t - 0.12 * a) / (0.55 * a)) ** 2
               + (dx / (0.6 * b)) ** 2) < 1.0
    tissue = np.where(nucleus, np.uint8(Tissue.NUCLEUS_DEGENERATED if degenerated else Tissue.NUCLEUS),
                      np.uint8(Tissue.ANNULUS))
    if not degenerated and disc.height > 5:  # intranuclear cleft: the thin dark line of an adult disc
        cleft = np.abs(reg.s - mid) < 0.45
        tissue = np.where(nucleus & cleft & (np.abs(dx) < 0.45 * b), np.uint8(Tissue.ANNULUS), tissue)
    reg.put(inside, tissue, disc.label)


def endplate_dome(r: np.ndarray, concavity: float = 1.5) -> np.ndarray:
    """How far (mm) a body's endplate recedes from its nominal level: central concavity, bevelled rim."""
    return concavity * (1.0 - np.minimum(r, 1.0) ** 2) + 2.5 * np.clip((r - 0.85) / 0.15, 0, 1)


def body_mask(reg: Region, spine: SpineModel, seg: Segment, a: float, b: float,
              concavity: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Inside of a vertebral body and its cortical shell (endplates included)."""
    dx = reg.x - spine.x0
    h = max(seg.height, 1.0)
    waist = 1.0 - 0.06 * np.sin(np.pi * np.clip((reg.s - seg.s0) / h, 0, 1))
    r = radial(reg.t, dx, a * np.where(reg.t < 0, waist, 1.0), b)
    dome = endplate_dome(r, concavity)
    lo = seg.s0 + dome
    hi = seg.s1 - dome
    inside = (r < 1.0) & (reg.s >= lo) & (reg.s <= hi)
    shell = inside & ((r > 1.0 - CORTEX_MM / a) | (reg.s < lo + CORTEX_MM) | (reg.s > hi - CORTEX_MM))
    return inside, shell


def paint_body(canvas: Canvas, spine: SpineModel, seg: Segment) -> None:
    a, b = seg.half_depth, seg.half_width
    reg = canvas.region((seg.s0 - 1, seg.s1 + 1), (-a - 1, a + 1), (spine.x0 - b - 1, spine.x0 + b + 1))
    if reg is None:
        return
    inside, shell = body_mask(reg, spine, seg, a, b)
    tissue = np.where(shell, np.uint8(Tissue.CORTEX), np.uint8(Tissue.MARROW))
    # basivertebral vein: a small notch of fluid-like signal in the middle of the posterior wall
    vein = (np.abs(reg.s - seg.centre) < 1.2 - 0.3 * (a - reg.t)) & (reg.t > a - 4) & (np.abs(reg.x - spine.x0) < 2)
    tissue = np.where(vein & inside, np.uint8(Tissue.FLUID), tissue)
    reg.put(inside, tissue, seg.label)


def paint_sacrum(canvas: Canvas, spine: SpineModel, seg: Segment, free_only: bool = False) -> None:
    """Five fused segments tapering caudally, with dark remnants of the sacral discs."""
    a, b = seg.half_depth, seg.half_width
    reg = canvas.region((seg.s0 - 1, seg.s1 + 1), (-a - 1, a + spine.canal_depth + 10),
                        (spine.x0 - b - 1, spine.x0 + b + 1))
    if reg is None:
        return
    frac = np.clip((reg.s - seg.s0) / seg.height, 0, 1)  # 0 at the tip, 1 at S1
    taper = 0.35 + 0.65 * frac ** 0.7
    inside, shell = body_mask(reg, spine, seg, a * taper, b * taper, concavity=1.2)
    tissue = np.where(shell, np.uint8(Tissue.CORTEX), np.uint8(Tissue.MARROW))
    bounds = seg.s1 - seg.height * np.cumsum([0.3, 0.24, 0.2, 0.15])
    remnant = np.zeros(np.broadcast_shapes(reg.s.shape, reg.t.shape), bool)
    for i, sb in enumerate(bounds):
        width = 2.5 if (i == 0 and spine.transitional == "lumbarised") else 0.8
        remnant |= (np.abs(reg.s - sb) < width) & (np.abs(reg.t) < 0.7 * a * taper)
    tissue = np.where(remnant & inside, np.uint8(Tissue.ANNULUS), tissue)
    # dorsal plate of the sacrum behind the sacral canal
    canal_back = a * taper + 1 + spine.canal_depth * (0.3 + 0.5 * frac)
    plate = (reg.t > canal_back) & (reg.t < canal_back + 5 + 3 * frac) & (np.abs(reg.x - spine.x0) < b * taper)
    plate = plate & (reg.s < seg.s1 - 4)
    # lateral masses join body and plate beside the sacral canal (the sacrum is one bone)
    dx = np.abs(reg.x - spine.x0)
    cw = spine.canal_half_width * (0.5 + 0.5 * frac)
    wing = (reg.t > 0) & (reg.t < canal_back + 3) & (dx > cw + 1) & (dx < b * taper) & (reg.s < seg.s1 - 4)
    plate = plate | wing
    tissue = np.where(plate, np.uint8(Tissue.POSTERIOR_MARROW), tissue)
    mask = inside | plate
    if free_only:  # beside a real mask: never paint over its structures or its canal
        mask = mask & (reg.labels() == 0) & ~np.isin(reg.tissues(), (Tissue.CSF, Tissue.EPIDURAL_FAT))
    reg.put(mask, tissue, seg.label)


def paint_canal(canvas: Canvas, spine: SpineModel) -> None:
    """Epidural fat, the CSF-filled dural sac, the cord down to the conus and the cauda equina."""
    sacrum = spine.segments[0]
    top = spine.segments[-1].s1 + 40
    cd, cw = spine.canal_depth, spine.canal_half_width
    reg = canvas.region((sacrum.s0 + 25, top), (5.0, 60.0), (spine.x0 - cw - 1, spine.x0 + cw + 1))
    if reg is None:
        return
    a = half_depth_at(spine, reg.s)
    in_sacrum = reg.s < 0
    taper = np.where(in_sacrum, 0.3 + 0.7 * np.clip((reg.s - sacrum.s0) / sacrum.height, 0, 1), 1.0)
    a = a * np.where(in_sacrum, 0.35 + 0.65 * np.clip((reg.s - sacrum.s0) / sacrum.height, 0, 1) ** 0.7, 1.0)
    depth = cd * np.where(in_sacrum, 0.3 + 0.5 * taper, 1.0)
    centre = a + 1.2 + depth / 2
    dx = reg.x - spine.x0
    canal = ((reg.t - centre) / (depth / 2)) ** 2 + np.abs(dx / (cw * taper)) ** 3 < 1.0
    sac_end = -0.3 * sacrum.height
    sac = (((reg.t - centre + 0.8) / (depth / 2 - 1.8)) ** 2 + np.abs(dx / (cw * taper - 2.0)) ** 3 < 1.0)
    sac = sac & (reg.s > sac_end)
    tissue = np.where(sac, np.uint8(Tissue.CSF), np.uint8(Tissue.EPIDURAL_FAT))
    grow = np.clip((reg.s - spine.conus_s) / 15.0, 0, 1)
    cord = (((reg.t - centre + 0.5) / (3.6 * grow + 1e-3)) ** 2 + (dx / (4.6 * grow + 1e-3)) ** 2) < 1.0
    tissue = np.where(cord & sac & (reg.s > spine.conus_s), np.uint8(Tissue.CORD), tissue)
    sac_back = centre + depth / 2 - 1.8
    for root_x in (-3.5, -1.2, 1.2, 3.5):  # cauda equina roots lie dependent (posterior when supine)
        root = ((reg.t - (sac_back - 2.2)) ** 2 + (dx - root_x) ** 2 < 0.8 ** 2) & (reg.s < spine.conus_s)
        tissue = np.where(root & sac & (reg.s > sac_end + 5), np.uint8(Tissue.NERVE), tissue)
    reg.put(canal, tissue, 0)


def paint_posterior_elements(canvas: Canvas, spine: SpineModel, seg: Segment, below: float, above: float) -> None:
    """Pedicles, laminae, spinous process and articular processes of one vertebra (same label)."""
    a, h = seg.half_depth, seg.height
    cd, cw = spine.canal_depth, spine.canal_half_width
    t_lam = a + 1.2 + cd
    thoracic = seg.name.startswith("T")
    slope = 0.55 if thoracic else 0.2
    sp_len = spine.spinous_length * (0.9 if thoracic else 1.0)
    reg = canvas.region((seg.s0 - 0.6 * below - sp_len * slope - 8, seg.s1 + 0.6 * above),
                        (a - 4, t_lam + sp_len + 2), (spine.x0 - cw - 16, spine.x0 + cw + 16))
    if reg is None:
        return
    s, t = reg.s, reg.t
    dx = np.abs(reg.x - spine.x0)
    ped_c = seg.s1 - 0.45 * h
    pedicle = (((s - ped_c) / (0.3 * h)) ** 2 + ((dx - cw - 4.5) / 4.5) ** 2 < 1.0) & (t > a - 4) & (t < t_lam + 2)
    lamina = (t >= t_lam - 0.5) & (t < t_lam + 7) & (dx < cw + 9) & (s > seg.s0 - 0.35 * below) & (s < seg.s1 - 0.3 * h)
    sp_c = seg.s0 + 0.35 * h - slope * (t - t_lam)
    sp_w = 4.5 - 2.0 * np.clip((t - t_lam) / sp_len, 0, 1)  # thick at the lamina, thin at the tip
    spinous = (dx < sp_w) & (t > t_lam + 2) & (t < t_lam + sp_len) & (np.abs(s - sp_c) < 0.22 * h + 0.5)
    facet = (dx > cw + 2) & (dx < cw + 14) & (t > t_lam - 6) & (t < t_lam + 6)
    facet = facet & ((s > seg.s0 - 0.5 * below + 1.0) & (s < seg.s1 + 0.5 * above - 1.0))
    bone = pedicle | lamina | spinous | facet
    edge = ((np.abs(t - t_lam) < 0.8) | (np.abs(t - t_lam - 7) < 0.8)) & ~spinous
    edge = edge | (spinous & ((dx > sp_w - 1.0) | (np.abs(s - sp_c) > 0.22 * h - 0.7)))
    tissue = np.where(edge, np.uint8(Tissue.CORTEX), np.uint8(Tissue.POSTERIOR_MARROW))
    # interspinous ligament and ligamentum flavum fill the gap to the next vertebra (no label)
    gap = (dx < 3.0) & (t > t_lam) & (t < t_lam + sp_len * 0.8) & (s > seg.s1 - 0.3 * h) & (s < seg.s1 + above)
    reg.put(gap & ~bone, Tissue.LIGAMENT, 0)
    reg.put(bone, tissue, seg.label)


def paint_spine(canvas: Canvas, spine: SpineModel, degenerated_discs: set[str]) -> None:
    """Everything but the abnormalities, in painting order."""
    paint_soft_tissue(canvas, spine)
    paint_ligaments(canvas, spine)
    if spine.spider is not None:
        from .spider import paint_spider

        paint_spider(canvas, spine, degenerated_discs)
        paint_sacrum(canvas, spine, spine.segments[0], free_only=True)
        return
    for seg in spine.segments:
        if seg.kind == "disc":
            paint_disc(canvas, spine, seg, seg.name in degenerated_discs)
    for seg in spine.segments:
        if seg.kind == "vertebra":
            paint_body(canvas, spine, seg)
        elif seg.kind == "sacrum":
            paint_sacrum(canvas, spine, seg)
    paint_canal(canvas, spine)
    for i, seg in enumerate(spine.segments):
        if seg.kind == "vertebra":
            below = spine.segments[i - 1].height
            above = spine.segments[i + 1].height if i + 1 < len(spine.segments) else 5.0
            paint_posterior_elements(canvas, spine, seg, below, above)
