"""DICOM SEG of the present structures, on the reference series (sagittal T2, or T1 when alone).

One segment per present structure, numbered 1..N in label order, with its SNOMED CT code, the category
Anatomical Structure and the ontology's display colour. BINARY is the default because every SEG-capable
viewer reads it; LABELMAP (one frame per slice, smaller) is an option.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from service.encode.identity import SEG_SERIES_NUMBER, ResultContext
from service.errors import EncodeError, UnencodableResultError
from service.infer.postprocess import SpineResult
from service.infer.series import SeriesVolume
from service.logs import redact
from service.ontology import ANATOMICAL_STRUCTURE, SCT, Ontology


@dataclass(frozen=True)
class EncodedSeg:
    dataset: Dataset
    segment_numbers: dict[int, int]
    """Structure label -> segment number in the SEG."""


def structure_code(code_value: str, code_meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code_value, SCT, code_meaning)


def build_seg(
    reference: SeriesVolume,
    result: SpineResult,
    ontology: Ontology,
    context: ResultContext,
    seg_type: str = "BINARY",
) -> EncodedSeg:
    """The SEG dataset; EncodeError when there is nothing to segment or highdicom refuses an attribute."""
    present = sorted({lv.label for lv in result.levels})
    if not present:
        raise EncodeError(f"job {context.job_id}: no structure found, nothing to put in a SEG")
    if result.labels.shape != reference.pixels.shape:
        raise EncodeError(
            f"label map {result.labels.shape} is not on the reference grid {reference.pixels.shape}"
        )
    segment_numbers = {label: i + 1 for i, label in enumerate(present)}
    lut = np.zeros(256, dtype=np.uint8)
    for label, number in segment_numbers.items():
        lut[label] = number
    pixels = lut[result.labels]
    sources = reference.source_datasets
    if reference.frame_numbers is not None:  # one multi-frame source: frames in the source's own order
        in_frame_order = np.zeros_like(pixels)
        for i, frame in enumerate(reference.frame_numbers):
            in_frame_order[frame - 1] = pixels[i]
        pixels = in_frame_order

    category = hd.sr.CodedConcept(*ANATOMICAL_STRUCTURE)
    algorithm = context.algorithm_identification()
    descriptions = []
    for label, number in segment_numbers.items():
        s = ontology.by_label(label)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=s.name,
                segmented_property_category=category,
                segmented_property_type=structure_code(s.code_value, s.code_meaning),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=context.uid("segment", str(label)),
                tracking_id=s.name,
                display_color=hd.color.CIELabColor.from_rgb(*s.color),
            )
        )
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type=seg_type,
            segment_descriptions=descriptions,
            series_instance_uid=context.uid("seg", "series"),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=context.uid("seg", "instance"),
            instance_number=1,
            manufacturer=context.manufacturer,
            manufacturer_model_name="lumbar-ai",
            software_versions=context.software_versions,
            device_serial_number=context.model_version[:64] or "unknown",
            content_description=f"Lumbar spine structures by {context.model_name}"[:64],
            content_label="LUMBAR_AI",
            content_creator_name=None,
            series_description=f"AI SEG {context.model_name}"[:64],
            contributing_equipment=context.contributing_equipment(),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise UnencodableResultError(
            f"job {context.job_id}: SEG could not be built: {redact(str(exc), quotes_values=True)}") from exc
    return EncodedSeg(seg, segment_numbers)
