"""Request and response bodies of the REST API, separate from the internal StudyRecord.

The internal record may grow fields (and holds server paths); the response schemas say what clients get,
so a change inside never leaks out by accident, and the OpenAPI document stays the contract.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, Field

from service.queue.state import StudyRecord, StudyState

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
StudyUID = Annotated[
    str,
    Path(
        pattern=UID_PATTERN,
        max_length=64,
        description="StudyInstanceUID (DICOM UID grammar: digits and dots, at most 64 characters)",
        examples=["1.2.826.0.1.3680043.8.498.1"],
    ),
]

# -- requests -------------------------------------------------------------------------------------------


class StudyListQuery(BaseModel):
    """Query of GET /studies."""

    model_config = {"extra": "forbid"}

    state: StudyState | None = Field(None, description="only studies in this state")
    offset: int = Field(0, ge=0, le=1_000_000)
    limit: int = Field(50, ge=1, le=500)


# -- responses ------------------------------------------------------------------------------------------


class Links(BaseModel):
    self: str
    report: str | None = None
    seg: str | None = None
    sr: str | None = None
    preview: str | None = None


class StudySummary(BaseModel):
    study_uid: str
    state: StudyState
    received_at: float = Field(description="first instance seen, epoch seconds")
    updated_at: float
    instances: int
    error: str | None = None
    links: Links


class SeriesOut(BaseModel):
    series_uid: str
    description: str
    modality: str
    count: int
    series_number: int | None
    orientation: str
    weighting: str
    role: str | None = Field(description='"t1" or "t2" when selected for the model')
    reason: str


class StudyDetail(StudySummary):
    state_times: dict[str, float] = Field(description="when the study last entered each state, epoch seconds")
    ignored_instances: int
    series: list[SeriesOut]
    t1_series_uid: str | None
    t2_series_uid: str | None
    decisions: list[str] = Field(description="series selection decisions, in words")
    warnings: list[str]
    attempts: int
    timings: dict[str, float] = Field(description="seconds per worker stage")
    results: list[Literal["report", "seg", "sr", "preview"]] = Field(description="results available now")
    deliveries: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="destination -> latest delivery status: state (pending, delivered, dead), attempts, reason",
    )


class StudyPage(BaseModel):
    items: list[StudySummary]
    total: int
    offset: int
    limit: int


class AcceptedStudy(BaseModel):
    study_uid: str
    instances: int = Field(description="instances stored by this request (new or already present)")
    duplicates: int = Field(description="of which were already in the spool, identical")
    ignored: int = Field(description="of which are kept but are not MR images (never processed)")
    status_url: str


class RejectedFile(BaseModel):
    file: str
    reason: str


class UploadResponse(BaseModel):
    detail: str
    studies: list[AcceptedStudy]
    rejected: list[RejectedFile]


class ActionResponse(BaseModel):
    study_uid: str
    detail: str
    state: StudyState | None = None


class Problem(BaseModel):
    detail: str


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


# -- conversion -----------------------------------------------------------------------------------------


def links_for(base: str, uid: str, available: list[str]) -> Links:
    names = {"report": "report", "seg": "seg", "sr": "sr", "preview": "preview.png"}
    return Links(self=f"{base}/studies/{uid}", **{k: f"{base}/studies/{uid}/{names[k]}" for k in available})


def summary_of(record: StudyRecord, base: str, available: list[str]) -> StudySummary:
    return StudySummary(
        study_uid=record.study_uid,
        state=record.state,
        received_at=record.received_at,
        updated_at=record.updated_at,
        instances=record.instances,
        error=record.error,
        links=links_for(base, record.study_uid, available),
    )


def detail_of(
    record: StudyRecord, base: str, available: list[str], deliveries: dict[str, dict[str, Any]] | None = None
) -> StudyDetail:
    return StudyDetail(
        **summary_of(record, base, available).model_dump(),
        state_times=record.state_times,
        ignored_instances=record.ignored_instances,
        series=[SeriesOut(**vars(s)) for s in record.series],
        t1_series_uid=record.t1_series_uid,
        t2_series_uid=record.t2_series_uid,
        decisions=record.decisions,
        warnings=record.warnings,
        attempts=record.attempts,
        timings=record.timings,
        results=available,
        deliveries=deliveries or {},
    )
