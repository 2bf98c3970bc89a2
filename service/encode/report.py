"""The JSON report: what the SR says, plus stage timings, the model's version and provenance.

It is what the REST API serves for GET /studies/{uid}/report, so it is self-describing: codes with their
schemes, units in the key names, and a plain statement when the model was trained on synthetic data.
"""

from __future__ import annotations

import json
import time
from typing import Any

from service.encode.identity import ResultContext
from service.infer.postprocess import SpineResult
from service.ontology import PRIVATE_SCHEME, SCT, Ontology

SCHEMA = "lumbar-ai/report/1"


def build_report(
    *,
    context: ResultContext,
    study_uid: str,
    t2_series_uid: str | None,
    t1_series_uid: str | None,
    reference_series_uid: str,
    result: SpineResult,
    ontology: Ontology,
    timings: dict[str, float],
    instances: dict[str, dict[str, str]],
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """instances: result kind -> {"sop_instance_uid", "series_instance_uid", "file"}."""
    levels = []
    positives = []
    for lv in result.levels:
        findings = []
        for f in lv.findings:
            finding = ontology.finding(f.key)
            findings.append(
                {
                    "key": f.key,
                    "name": f.name,
                    "code": {"value": finding.code_value, "scheme": PRIVATE_SCHEME, "meaning": finding.code_meaning},
                    "icd10": finding.icd10,
                    "probability": f.probability,
                    "threshold": f.threshold,
                    "present": f.present,
                }
            )
            if f.present:
                positives.append(
                    {"level": lv.level, "structure": lv.name, "finding": f.name, "probability": f.probability}
                )
        levels.append(
            {
                "label": lv.label,
                "structure": lv.name,
                "kind": lv.kind,
                "level": lv.level,
                "code": {"value": lv.code_value, "scheme": SCT, "meaning": lv.code_meaning},
                "volume_mm3": lv.volume_mm3,
                "disc_height_mm": lv.disc_height_mm,
                "posterior_extent_mm": lv.posterior_extent_mm,
                "migration_mm": lv.migration_mm,
                "endplate_intrusion_mm": lv.endplate_intrusion_mm,
                "centroid_mm": list(lv.centroid_mm),
                "model_label": lv.raw_label,
                "findings": findings,
            }
        )
    statement = f"{context.synthetic_data_statement}." if context.synthetic_data_statement else ""
    return {
        "schema": SCHEMA,
        "study_uid": study_uid,
        "job_id": context.job_id,
        "model": {
            "name": context.model_name,
            "version": context.model_version,
            "trained_on_synthetic_data": context.trained_on_synthetic_data,
            "provenance": context.provenance_statement,
            "metrics": context.card.get("metrics"),
        },
        "statement": statement,
        "disclaimer": "AI result, not verified by a physician.",
        "series": {"t2": t2_series_uid, "t1": t1_series_uid, "reference": reference_series_uid},
        "levels": levels,
        "positive_findings": positives,
        "postprocessing_changes": [
            {"kind": c.kind, "model_label": c.raw_label, "label": c.label, "voxels": c.voxels, "reason": c.reason}
            for c in result.changes
        ],
        "outlines_refined": result.outlines_refined,
        "timings_s": {k: round(float(v), 4) for k, v in timings.items()},
        "instances": instances,
        "warnings": list(warnings or []),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def report_bytes(report: dict[str, Any]) -> bytes:
    return (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode()
