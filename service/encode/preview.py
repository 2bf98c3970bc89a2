"""A picture for PACS and people that cannot show a SEG: the mid-sagittal slice with coloured structures.

The slice shown is the one through the spine (most labelled pixels; the middle one on a tie), resized to
square display pixels, with level names beside each structure and the positive findings with their
probabilities. The same RGB image is written as a PNG and as a Secondary Capture instance in the study.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from scipy import ndimage

from service.encode.identity import PREVIEW_SERIES_NUMBER, ResultContext
from service.errors import UnencodableResultError
from service.infer.postprocess import SpineResult
from service.infer.series import SeriesVolume
from service.logs import redact
from service.ontology import Ontology

DISPLAY_SIZE = 768
"""Longest side of the preview in pixels."""
OVERLAY_ALPHA = 0.35


@dataclass(frozen=True)
class Preview:
    rgb: np.ndarray
    """uint8 (rows, cols, 3)."""
    slice_index: int
    display_spacing: float
    """mm per display pixel in both directions."""


def preview_slice(labels: np.ndarray) -> int:
    """The slice with the most labelled pixels; the middle slice when nothing or several tie."""
    counts = (labels > 0).reshape(labels.shape[0], -1).sum(axis=1)
    middle = labels.shape[0] // 2
    if counts.max() == 0:
        return middle
    best = np.flatnonzero(counts == counts.max())
    return int(best[np.argmin(np.abs(best - middle))])


def render_preview(
    reference: SeriesVolume, result: SpineResult, ontology: Ontology, context: ResultContext
) -> Preview:
    k = preview_slice(result.labels)
    image = reference.pixels[k]
    labels = result.labels[k]
    lo, hi = np.percentile(image, [1.0, 99.5]) if image.size else (0.0, 1.0)
    grey = np.clip((image - lo) / max(float(hi - lo), 1e-6), 0, 1)
    rgb = np.repeat((grey * 255).astype(np.float32)[..., None], 3, axis=2)
    colours = np.zeros((256, 3), dtype=np.float32)
    for s in ontology.structures:
        colours[s.label] = s.color
    inside = labels > 0
    rgb[inside] = (1 - OVERLAY_ALPHA) * rgb[inside] + OVERLAY_ALPHA * colours[labels[inside]]
    edges = inside & ~ndimage.binary_erosion(labels > 0, iterations=1) | _label_edges(labels)
    rgb[edges] = colours[labels[edges]]

    row_mm, col_mm = reference.pixel_spacing
    height_mm, width_mm = labels.shape[0] * row_mm, labels.shape[1] * col_mm
    spacing = max(height_mm, width_mm) / DISPLAY_SIZE
    size = (max(1, round(width_mm / spacing)), max(1, round(height_mm / spacing)))
    picture = Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB").resize(size, Image.Resampling.BILINEAR)
    _annotate(picture, labels, result, (size[0] / labels.shape[1], size[1] / labels.shape[0]), context)
    return Preview(np.asarray(picture, dtype=np.uint8), k, spacing)


def _label_edges(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another non-zero label (borders between touching structures)."""
    out = np.zeros(labels.shape, dtype=bool)
    right = (labels[:, :-1] != labels[:, 1:]) & (labels[:, :-1] > 0) & (labels[:, 1:] > 0)
    down = (labels[:-1, :] != labels[1:, :]) & (labels[:-1, :] > 0) & (labels[1:, :] > 0)
    out[:, :-1] |= right
    out[:-1, :] |= down
    return out


def _annotate(
    picture: Image.Image, labels: np.ndarray, result: SpineResult, scale: tuple[float, float], context: ResultContext
) -> None:
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(12, picture.size[1] // 48))
    small = ImageFont.load_default(size=max(10, picture.size[1] // 60))
    placed: list[tuple[float, float, float, float]] = []
    for level in result.levels:
        rows, cols = np.nonzero(labels == level.label)
        if rows.size == 0:
            continue
        y = rows.mean() * scale[1]
        text = level.level if level.kind != "sacrum" else "S"
        positives = [f"{f.name} {f.probability:.2f}" for f in level.positive_findings]
        if positives:
            text += ": " + ", ".join(positives)
        # Right of the structure; left of it when that would run off the picture.
        x, anchor = (cols.max() + 2) * scale[0], "lm"
        box = draw.textbbox((x, y), text, font=font, anchor=anchor)
        if box[2] > picture.size[0] and cols.min() * scale[0] > picture.size[0] - box[0]:
            x, anchor = (cols.min() - 2) * scale[0], "rm"
            box = draw.textbbox((x, y), text, font=font, anchor=anchor)
        while any(_overlap(box, other) for other in placed):  # thin neighbouring levels
            y -= box[3] - box[1] + 2  # levels come caudal first, so move the cranial one up
            box = draw.textbbox((x, y), text, font=font, anchor=anchor)
        placed.append(box)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((x, y), text, font=font, anchor=anchor, fill=(255, 255, 0) if positives else (255, 255, 255))
    banner = [f"lumbar-ai - {context.model_name} {context.model_version} - AI result, not verified by a physician"]
    if context.synthetic_data_statement:
        banner.append(context.synthetic_data_statement.split(";")[0])
    y = 4
    for line in banner:
        box = draw.textbbox((4, y), line, font=small)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((4, y), line, font=small, fill=(255, 255, 255))
        y = box[3] + 2


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def png_bytes(preview: Preview) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(preview.rgb, "RGB").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _orientation_letters(direction: np.ndarray) -> str:
    """DICOM PatientOrientation letters of an LPS direction, strongest component first."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    out = ""
    for axis in np.argsort(-np.abs(direction)):
        if abs(direction[axis]) > 0.25:
            positive, negative = letters[axis]
            out += positive if direction[axis] > 0 else negative
    return out or "L"


def build_secondary_capture(
    reference: SeriesVolume, preview: Preview, context: ResultContext
) -> Dataset:
    ref = reference.datasets[preview.slice_index]
    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref,
            pixel_array=preview.rgb,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=context.uid("preview", "series"),
            series_number=PREVIEW_SERIES_NUMBER,
            sop_instance_uid=context.uid("preview", "instance"),
            instance_number=1,
            manufacturer=context.manufacturer,
            pixel_spacing=(preview.display_spacing, preview.display_spacing),
            patient_orientation=(
                _orientation_letters(reference.row_dir),
                _orientation_letters(reference.col_dir),
            ),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            contributing_equipment=context.contributing_equipment(),
            series_description=f"AI preview {context.model_name}"[:64],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise UnencodableResultError(
            f"job {context.job_id}: preview could not be built: {redact(str(exc), quotes_values=True)}") from exc
    sc.BurnedInAnnotation = "YES"
    if "Laterality" not in sc:  # Type 2C in General Series; the spine is unpaired, so empty
        sc.Laterality = ""
    sc.ImageComments = "AI result preview; not for primary diagnosis"
    return sc
