"""Contact sheets: what a person looks at to judge whether a synthetic study looks like lumbar MRI.

Each study becomes one row: mid-sagittal T2, mid-sagittal T1, and the T2 with its label map overlaid
in the ontology's colours, level names at each structure and the injected findings written below.
Images are read back from the written DICOM files (not from memory), so the sheet also shows that
the files decode with the geometry the labels assume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

from service.errors import SynthError
from service.ontology import DEFAULT_ONTOLOGY

from .output import StudyTruth

PANEL = 320
TEXT_H = 76


def read_series(folder: Path) -> sitk.Image:
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    if not names:
        raise SynthError(f"{folder}: no DICOM series found")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    return reader.Execute()


def _window(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, [0.5, 99.5])
    return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _panel(gray: np.ndarray, size: int = PANEL) -> Image.Image:
    img = Image.fromarray(gray)
    return img.resize((size, size), Image.BILINEAR)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default()


def study_row(study_dir: Path) -> Image.Image:
    study_dir = Path(study_dir)
    truth = StudyTruth.load(study_dir)
    t2 = read_series(study_dir / "dicom" / "sag_t2")
    t1 = read_series(study_dir / "dicom" / "sag_t1")
    labels = sitk.ReadImage(str(study_dir / "labels" / "sag_t2.nii.gz"))
    a2, a1, lab = (sitk.GetArrayFromImage(x) for x in (t2, t1, labels))
    mid2, mid1 = a2.shape[0] // 2, a1.shape[0] // 2
    g2 = _window(a2[mid2].astype(np.float32))
    g1 = _window(a1[mid1].astype(np.float32))
    colors = np.zeros((256, 3), np.uint8)
    for s in DEFAULT_ONTOLOGY.structures:
        colors[s.label] = s.color
    lab2 = lab[mid2]
    rgb = np.repeat(g2[..., None], 3, axis=2).astype(np.float32)
    m = lab2 > 0
    rgb[m] = 0.45 * rgb[m] + 0.55 * colors[lab2[m]]
    overlay = _panel(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(overlay)
    scale = PANEL / lab2.shape[1], PANEL / lab2.shape[0]
    font = _font(10)
    abnormal = {f["level"] for f in truth.findings}
    for value in np.unique(lab2):
        if value == 0:
            continue
        ys, xs = np.nonzero(lab2 == value)
        s = DEFAULT_ONTOLOGY.by_label(int(value))
        x = float(xs.max() if s.kind == "disc" else xs.mean()) * scale[0]
        y = float(ys.mean()) * scale[1]
        name = s.level if s.kind != "sacrum" else "S"
        hit = s.kind != "sacrum" and s.level in abnormal
        draw.text((x + 3, y - 5), name + (" *" if hit else ""), fill=(255, 60, 60) if hit else (255, 255, 255),
                  font=font)
    row = Image.new("RGB", (3 * PANEL, PANEL + TEXT_H), (0, 0, 0))
    row.paste(_panel(g2).convert("RGB"), (0, 0))
    row.paste(_panel(g1).convert("RGB"), (PANEL, 0))
    row.paste(overlay, (2 * PANEL, 0))
    draw = ImageDraw.Draw(row)
    big = _font(12)
    s2, s1 = truth.series["sag_t2"], truth.series["sag_t1"]
    head = (f"seed {truth.seed}  {truth.source}  T2 {s2['rows']}x{s2['cols']}x{s2['num_slices']}  "
            f"T1 {s1['rows']}x{s1['cols']}x{s1['num_slices']}"
            + (f"  transitional: {truth.transitional_anatomy}" if truth.transitional_anatomy else ""))
    draw.text((4, PANEL + 2), head, fill=(255, 255, 255), font=big)
    found = [f"{f['level']} {DEFAULT_ONTOLOGY.finding(f['finding']).name}"
             + (f" ({f['migration']})" if "migration" in f else "")
             + (f" (Modic {f['modic_type']})" if "modic_type" in f else "") for f in truth.findings]
    text = "; ".join(found) if found else "normal study (no findings)"
    lines = [text[i:i + 140] for i in range(0, len(text), 140)][:4]
    for i, line in enumerate(lines):
        draw.text((4, PANEL + 18 + 14 * i), line, fill=(255, 220, 120), font=big)
    for i, title in enumerate(("sagittal T2 (mid)", "sagittal T1 (mid)", "labels on T2 (* = finding)")):
        draw.text((i * PANEL + 4, 4), title, fill=(120, 255, 120), font=big)
    return row


def contact_sheet(study_dirs: list[Path], out: Path) -> Path:
    """One row per study, stacked; written as PNG."""
    if not study_dirs:
        raise SynthError("no study folders given")
    rows = [study_row(d) for d in study_dirs]
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)))
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
