"""Stage ⑤ entry point: one post-processed study in, every result file's bytes out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from service.encode.identity import ResultContext
from service.encode.preview import build_secondary_capture, png_bytes, render_preview
from service.encode.report import build_report, report_bytes
from service.encode.results import FILE_NAMES, dicom_bytes
from service.encode.seg import build_seg
from service.encode.source_header import conform_source_headers
from service.encode.sr import build_sr
from service.infer.postprocess import SpineResult
from service.infer.series import SeriesVolume
from service.ontology import Ontology


@dataclass
class ResultBundle:
    files: dict[str, bytes]
    """Result kind (see results.FILE_NAMES) -> file content."""
    instances: dict[str, dict[str, str]]
    """DICOM result kind -> SOP and series instance UIDs and file name."""
    timings: dict[str, float] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """The caller's warnings and the encoder's own (source attributes left empty)."""


def encode_study(
    *,
    reference: SeriesVolume,
    other: SeriesVolume | None,
    t2_series_uid: str | None,
    t1_series_uid: str | None,
    result: SpineResult,
    ontology: Ontology,
    context: ResultContext,
    seg_type: str,
    timings: dict[str, float],
    warnings: list[str] | None = None,
) -> ResultBundle:
    """SEG, SR, preview (DICOM and PNG) and the JSON report; timings gain seg, sr and preview.

    The source headers are conformed first (source_header.py): a study the listener accepted must not
    fail here for a Type 2 attribute it lacks or a value highdicom refuses."""
    timings = dict(timings)
    sources = [*reference.source_datasets, *(other.source_datasets if other else [])]
    warnings = [*(warnings or []), *conform_source_headers(sources)]
    t0 = time.perf_counter()
    seg = build_seg(reference, result, ontology, context, seg_type)
    seg_data = dicom_bytes(seg.dataset)
    timings["seg"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sr = build_sr(reference, seg, result, ontology, context, other.source_datasets if other else ())
    sr_data = dicom_bytes(sr)
    timings["sr"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    preview = render_preview(reference, result, ontology, context)
    sc = build_secondary_capture(reference, preview, context)
    png = png_bytes(preview)
    sc_data = dicom_bytes(sc)
    timings["preview"] = time.perf_counter() - t0

    instances = {
        kind: {
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "series_instance_uid": str(ds.SeriesInstanceUID),
            "sop_class_uid": str(ds.SOPClassUID),
            "file": FILE_NAMES[kind],
        }
        for kind, ds in (("seg", seg.dataset), ("sr", sr), ("preview_dcm", sc))
    }
    report = build_report(
        context=context,
        study_uid=str(reference.datasets[0].StudyInstanceUID),
        t2_series_uid=t2_series_uid,
        t1_series_uid=t1_series_uid,
        reference_series_uid=reference.series_uid,
        result=result,
        ontology=ontology,
        timings=timings,
        instances=instances,
        warnings=warnings,
    )
    files = {"seg": seg_data, "sr": sr_data, "preview_dcm": sc_data, "preview": png, "report": report_bytes(report)}
    return ResultBundle(files=files, instances=instances, timings=timings, report=report, warnings=warnings)
