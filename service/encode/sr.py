"""Comprehensive 3D SR with a TID 1500 Measurement Report of the structures and per-level findings.

One volumetric measurement group (TID 1411) per present structure, referencing its SEG segment and the
source images: volume, for discs their height and how far they reach behind the bodies, migrate and
intrude into a body (private codes), and for each finding of the structure's site its
probability and the thresholded decision (Present/Absent) as a qualitative evaluation. The findings have no
PS3.16 codes, so they use the ontology's private coding scheme, declared in the
CodingSchemeIdentificationSequence so that a receiver can tell what the designator means.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from service.encode.identity import SR_SERIES_NUMBER, ResultContext
from service.encode.seg import EncodedSeg, structure_code
from service.errors import UnencodableResultError
from service.infer.postprocess import LevelResult, SpineResult
from service.infer.series import SeriesVolume
from service.logs import redact
from service.ontology import ANATOMICAL_STRUCTURE, PRIVATE_SCHEME, PRIVATE_SCHEME_NAME, Finding, Ontology

PROBABILITY_SUFFIX = "P"
"""A finding's probability is coded as the finding's private code plus this suffix (e.g. LAI0002P)."""
DISC_MEASUREMENTS = {
    "posterior_extent_mm": ("LAI0101", "Disc extent behind vertebral bodies"),
    "migration_mm": ("LAI0102", "Displaced disc material migration"),
    "endplate_intrusion_mm": ("LAI0103", "Disc intrusion into vertebral body"),
}
"""The disc measurements (service/infer/disc_morphometry.py) have no PS3.16 codes either."""


def finding_code(finding: Finding) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(finding.code_value, PRIVATE_SCHEME, finding.code_meaning)


def probability_code(finding: Finding) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(
        finding.code_value + PROBABILITY_SUFFIX, PRIVATE_SCHEME, f"{finding.code_meaning} probability"
    )


def coding_scheme() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name=PRIVATE_SCHEME_NAME, responsible_organization="lumbar-ai project"
    )


def build_sr(
    reference: SeriesVolume,
    seg: EncodedSeg,
    result: SpineResult,
    ontology: Ontology,
    context: ResultContext,
    other_evidence: Sequence[Dataset] = (),
) -> Dataset:
    """The SR dataset; other_evidence lists further inputs of the model (the T1 series)."""
    sources = reference.source_datasets
    # Each group names the source series once, and every source image is listed in the evidence
    # (Current Requested Procedure Evidence). A per-group list of every image, or a TID 1600 image
    # library, would repeat the series in the content and cost highdicom about a second per study.
    source_series = hd.sr.SourceSeriesForSegmentation(reference.series_uid)
    groups = [
        _measurement_group(level, seg, source_series, ontology, context)
        for level in result.levels
        if level.label in seg.segment_numbers
    ]
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=context.uid("device"),
            name=context.model_name[:64],
            manufacturer_name=context.manufacturer,
            model_name=f"{context.model_name} {context.model_version}"[:64],
        ),
    )
    try:
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=device),
            procedure_reported=codes.SCT.ImagingProcedure,
            imaging_measurements=groups,
        )
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*sources, seg.dataset, *other_evidence],
            content=report,
            series_instance_uid=context.uid("sr", "series"),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=context.uid("sr", "instance"),
            instance_number=1,
            manufacturer=context.manufacturer,
            is_complete=True,
            is_final=False,
            is_verified=False,
            contributing_equipment=context.contributing_equipment(),
            series_description=f"AI SR {context.model_name}"[:64],
            coding_schemes=[coding_scheme()],
            manufacturer_model_name="lumbar-ai",
            software_versions=context.software_versions,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise UnencodableResultError(
            f"job {context.job_id}: SR could not be built: {redact(str(exc), quotes_values=True)}") from exc
    return sr


def _measurement_group(
    level: LevelResult,
    seg: EncodedSeg,
    source_series: hd.sr.SourceSeriesForSegmentation,
    ontology: Ontology,
    context: ResultContext,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    site = structure_code(level.code_value, level.code_meaning)
    algorithm = context.sr_algorithm()  # once, on the group: it identifies the algorithm of all its measurements
    measurements = [
        hd.sr.Measurement(
            name=codes.SCT.Volume, value=level.volume_mm3, unit=codes.UCUM.CubicMillimeter
        )
    ]
    if level.disc_height_mm is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.DCM.Height, value=level.disc_height_mm, unit=codes.UCUM.Millimeter
            )
        )
    for attribute, (code, meaning) in DISC_MEASUREMENTS.items():
        value = getattr(level, attribute)
        if value is not None:
            measurements.append(hd.sr.Measurement(name=hd.sr.CodedConcept(code, PRIVATE_SCHEME, meaning),
                                                  value=value, unit=codes.UCUM.Millimeter))
    evaluations = []
    for f in level.findings:
        finding = ontology.finding(f.key)
        measurements.append(
            hd.sr.Measurement(
                name=probability_code(finding), value=f.probability, unit=codes.UCUM.NoUnits
            )
        )
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=finding_code(finding), value=codes.SCT.Present if f.present else codes.SCT.Absent
            )
        )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=context.uid("segment", str(level.label)), identifier=level.name),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.dataset.SOPClassUID),
            sop_instance_uid=str(seg.dataset.SOPInstanceUID),
            segment_number=seg.segment_numbers[level.label],
            source_series=source_series,
        ),
        finding_type=site,
        finding_category=hd.sr.CodedConcept(*ANATOMICAL_STRUCTURE),
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(site)],
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
    )
