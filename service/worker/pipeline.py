"""Stage ④ and ⑤ for one job: spool files in, result files on disk out, every stage timed.

decode (both series) -> resample (T1 onto the T2 grid) -> model (preprocess, image encoder, fusion head,
findings) -> postprocess -> SEG, SR, preview -> write. Errors that come from the study itself (a series
missing, undecodable or inconsistent, nothing found, results that cannot be encoded from its headers) are
INPUT_ERRORS: retrying cannot help, so the worker fails the study at once. Anything else (ONNX Runtime, a full disk, a bug) is retried by the
queue and dead-lettered after settings.max_attempts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.config import Settings
from service.encode.bundle import encode_study
from service.encode.identity import ResultContext
from service.encode.results import study_results_dir, write_results
from service.errors import (
    InconsistentSeriesError,
    MissingSeriesError,
    NoStructureFoundError,
    SeriesDecodeError,
    UnencodableResultError,
)
from service.infer.postprocess import SpineResult, postprocess
from service.infer.series import SeriesVolume, load_series, resample_onto
from service.ontology import Ontology
from service.queue.jobs import Job
from service.receive.spool import Spool

log = logging.getLogger(__name__)

INPUT_ERRORS = (MissingSeriesError, SeriesDecodeError, InconsistentSeriesError, NoStructureFoundError,
                UnencodableResultError)


class Model(Protocol):
    """What the worker needs of service.infer.model.OnnxModel."""

    card: dict[str, Any]
    ontology: Ontology
    finding_thresholds: dict[str, float]
    finding_combiners: dict[str, Any]
    exclusive_findings: tuple[tuple[str, ...], ...]

    def predict(self, t2: np.ndarray | None, t1: np.ndarray | None, pixel_spacing: tuple[float, float],
                slice_batch: int = 8, grid: Any = None) -> Any: ...


@dataclass
class ProcessedJob:
    study_uid: str
    results: dict[str, str]
    """Result kind -> absolute path."""
    results_dir: Path
    instances: dict[str, dict[str, str]]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    result: SpineResult | None = None


def series_files(spool: Spool, study_uid: str, series_uid: str) -> list[Path]:
    files = [f.path for f in spool.instances(study_uid) if f.series_uid == series_uid]
    if not files:
        raise MissingSeriesError(f"series {series_uid} of study {study_uid} has no instances in the spool")
    return files


def load_inputs(spool: Spool, job: Job, timings: dict[str, float], warnings: list[str]
                ) -> tuple[SeriesVolume, SeriesVolume | None, np.ndarray | None]:
    """(reference series, the other series, the other's pixels on the reference grid)."""
    t0 = time.perf_counter()
    t2 = load_series(series_files(spool, job.study_uid, job.t2_series_uid)) if job.t2_series_uid else None
    t1 = load_series(series_files(spool, job.study_uid, job.t1_series_uid)) if job.t1_series_uid else None
    timings["decode"] = time.perf_counter() - t0
    for volume in (t2, t1):
        if volume is not None:
            warnings.extend(f"series {volume.series_uid}: {why}" for why in volume.dropped)
    if t2 is None:
        assert t1 is not None  # a Job always names one series
        warnings.append("sagittal T1 only: the model ran without its T2 channel")
        return t1, None, None
    if t1 is None:
        warnings.append("sagittal T2 only: the model ran without its T1 channel")
        return t2, None, None
    frame_t2 = t2.datasets[0].get("FrameOfReferenceUID")
    frame_t1 = t1.datasets[0].get("FrameOfReferenceUID")
    if frame_t2 and frame_t1 and frame_t2 != frame_t1:
        warnings.append("T1 and T2 have different frames of reference: T1 not used")
        return t2, None, None
    t0 = time.perf_counter()
    t1_on_t2 = resample_onto(t1, t2)
    timings["resample"] = time.perf_counter() - t0
    return t2, t1, t1_on_t2


def process_job(job: Job, model: Model, settings: Settings) -> ProcessedJob:
    """Run the model on the job's series and write every result file under results_dir/<study>/."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    warnings: list[str] = []
    spool = Spool(settings.spool_dir)
    reference, other, other_on_ref = load_inputs(spool, job, timings, warnings)
    reference_is_t2 = job.t2_series_uid is not None and reference.series_uid == job.t2_series_uid

    prediction = model.predict(
        reference.pixels if reference_is_t2 else None,
        other_on_ref if reference_is_t2 else reference.pixels,
        reference.pixel_spacing,
        settings.slice_batch,
        grid=reference,
    )
    timings.update({k: float(v) for k, v in prediction.timings.items()})

    t0 = time.perf_counter()
    result = postprocess(prediction.labels, prediction.finding_probs, model.ontology, model.finding_thresholds,
                         reference, prediction.finding_maps, model.finding_combiners, model.exclusive_findings,
                         prediction.outline_refiner)
    timings["postprocess"] = time.perf_counter() - t0
    if prediction.outline_refiner is not None:
        timings["outline_refiner"] = prediction.outline_refiner.seconds  # part of postprocess
    if not result.levels:
        raise NoStructureFoundError(f"no spinal structure found in series {reference.series_uid}")
    if result.changes:
        warnings.append(f"post-processing changed {len(result.changes)} component(s); see the report")

    context = ResultContext.from_card(job.job_id, model.card, settings.manufacturer)
    timings["infer_total"] = time.perf_counter() - started
    bundle = encode_study(
        reference=reference,
        other=other,
        t2_series_uid=job.t2_series_uid,
        t1_series_uid=job.t1_series_uid,
        result=result,
        ontology=model.ontology,
        context=context,
        seg_type=settings.seg_type,
        timings=timings,
        warnings=warnings,
    )
    t0 = time.perf_counter()
    paths = write_results(settings.results_dir, job.study_uid, bundle.files)
    timings = {**bundle.timings, "write": time.perf_counter() - t0, "total": time.perf_counter() - started}
    return ProcessedJob(
        study_uid=job.study_uid,
        results=paths,
        results_dir=study_results_dir(settings.results_dir, job.study_uid).resolve(),
        instances=bundle.instances,
        timings=timings,
        warnings=bundle.warnings,
        result=result,
    )
