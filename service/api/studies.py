"""Routes of /studies: upload, listing, state, results, and the actions hospital IT needs.

Errors from the stages arrive as service.errors subclasses and are translated to HTTP in app.py; here
only the API's own conditions (unknown study, result not there yet) become HTTPExceptions.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.api import results as results_mod
from service.api.deps import BaseUrl, RedisDep, SettingsDep, SpoolDep, StoreDep
from service.api.schemas import (
    AcceptedStudy,
    ActionResponse,
    Problem,
    RejectedFile,
    StudyDetail,
    StudyListQuery,
    StudyPage,
    StudyUID,
    UploadResponse,
    detail_of,
    summary_of,
)
from service.api.uploads import (
    UploadOutcome,
    iter_files,
    overall_status,
    record_received,
    store_file,
    upload_slot,
)
from service.assemble import actions
from service.queue.state import StudyRecord, StudyState, StudyStore
from service.receive.spool import Spool

router = APIRouter(tags=["studies"])

MAX_FILES_PER_UPLOAD = 100_000
_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "DICOM Part-10 files, or zip archives of them",
                    }
                },
            }
        }
    },
}
_ERRORS = {401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}, 503: {"model": Problem}}


@router.post(
    "/studies",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=UploadResponse,
    summary="Upload DICOM files or a zip of them",
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={
        400: {"model": UploadResponse,
              "description": "a DICOM file is truncated or inconsistent, has an invalid UID, or a zip is broken"},
        413: {"model": UploadResponse, "description": "body or zip content over LUMBAR_AI_MAX_UPLOAD_MB"},
        415: {"model": UploadResponse, "description": "a file is not DICOM (named in the response)"},
        507: {"model": UploadResponse, "description": "the spool is below its disk reserve"},
        **_ERRORS,
    },
)
async def upload(request: Request, spool: SpoolDep, settings: SettingsDep, base: BaseUrl) -> JSONResponse:
    """Store every file into the spool, like a C-STORE would; files that are good stay stored even when
    another file of the same request is refused. The study is processed after its quiet period."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "send multipart/form-data with one or more 'files' parts (DICOM files or zip archives)",
        )
    limit = settings.max_upload_mb * 1024 * 1024
    instance_limit = settings.max_instance_mb * 1024 * 1024
    async with upload_slot(request):
        return await _store_upload(request, spool, limit, instance_limit, base)


async def _store_upload(request: Request, spool, limit: int, instance_limit: int, base: str) -> JSONResponse:
    form = await request.form(max_files=MAX_FILES_PER_UPLOAD, max_fields=100)
    try:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "no files: send one or more 'files' parts")
        outcome = UploadOutcome()

        def store_all() -> None:
            for i, up in enumerate(uploads):
                name = (up.filename or f"file {i + 1}")[:200]
                for member, data in iter_files(spool, name, up.file, instance_limit, limit):
                    store_file(spool, member, data, outcome)

        await run_in_threadpool(store_all)
    finally:
        await form.close()
    record_received(request, outcome)
    return _upload_response(outcome, base)


def _upload_response(outcome: UploadOutcome, base: str) -> JSONResponse:
    per_study: dict[str, list] = defaultdict(list)
    for stored in outcome.accepted:
        per_study[stored.study_uid].append(stored)
    studies = [
        AcceptedStudy(
            study_uid=uid,
            instances=len(items),
            duplicates=sum(s.duplicate for s in items),
            ignored=sum(s.ignored for s in items),
            status_url=f"{base}/studies/{uid}",
        )
        for uid, items in per_study.items()
    ]
    rejected = [RejectedFile(file=r.name, reason=r.reason) for r in outcome.rejected]
    code = overall_status(outcome)
    if code == 202:
        detail = f"{len(outcome.accepted)} instance(s) stored in {len(studies)} study(ies)"
    else:
        names = ", ".join(r.file for r in rejected[:5]) + (" ..." if len(rejected) > 5 else "")
        detail = (
            f"{len(rejected)} file(s) refused ({names}); {len(outcome.accepted)} instance(s) stored and kept"
        )
    body = UploadResponse(detail=detail, studies=studies, rejected=rejected)
    return JSONResponse(body.model_dump(), status_code=code)


@router.get("/studies", response_model=StudyPage, summary="List studies, newest first", responses=_ERRORS)
def list_studies(
    query: Annotated[StudyListQuery, Query()], store: StoreDep, settings: SettingsDep, base: BaseUrl
) -> StudyPage:
    records, total = store.list(query.state, query.offset, query.limit)
    items = [summary_of(r, base, results_mod.available(settings.results_dir, r)) for r in records]
    return StudyPage(items=items, total=total, offset=query.offset, limit=query.limit)


def _record(store: StudyStore, spool: Spool, uid: str) -> StudyRecord:
    """The study's state; a study in the spool that the assembler has not recorded yet reads as received."""
    record = store.get(uid)
    if record is not None:
        return record
    received = spool.last_received(uid)
    if received is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"study {uid} is not known here")
    instances = spool.instances(uid)
    return StudyRecord(
        study_uid=uid,
        state=StudyState.RECEIVED,
        received_at=received,
        updated_at=received,
        state_times={StudyState.RECEIVED.value: received},
        instances=len(instances),
    )


@router.get("/studies/{uid}", response_model=StudyDetail, summary="State of one study", responses=_ERRORS)
def get_study(
    request: Request, uid: StudyUID, store: StoreDep, spool: SpoolDep, settings: SettingsDep, base: BaseUrl
) -> StudyDetail:
    """State, series selection decisions, timings per stage, errors, and links to the results present."""
    record = _record(store, spool, uid)
    deliveries = request.app.state.outbox.status(uid)
    return detail_of(record, base, results_mod.available(settings.results_dir, record), deliveries)


def _result(kind: str, uid: str, store: StudyStore, spool: Spool, settings) -> FileResponse:
    record = _record(store, spool, uid)
    path = results_mod.result_path(settings.results_dir, record, kind)
    if path is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no {kind} for study {uid} (state: {record.state.value})"
        )
    suffix = results_mod.FILE_NAMES[kind].rsplit(".", 1)[-1]
    return FileResponse(path, media_type=results_mod.MEDIA_TYPES[kind], filename=f"{uid}-{kind}.{suffix}")


def _file_responses(media_type: str) -> dict:
    return {200: {"content": {media_type: {}}, "description": "the file"}, **_ERRORS}


@router.get(
    "/studies/{uid}/report",
    response_class=FileResponse,
    summary="JSON report: findings per level, measurements, timings, model version",
    responses=_file_responses("application/json"),
)
def get_report(uid: StudyUID, store: StoreDep, spool: SpoolDep, settings: SettingsDep) -> FileResponse:
    return _result("report", uid, store, spool, settings)


@router.get(
    "/studies/{uid}/seg",
    response_class=FileResponse,
    summary="DICOM SEG of the 19 structures",
    responses=_file_responses("application/dicom"),
)
def get_seg(uid: StudyUID, store: StoreDep, spool: SpoolDep, settings: SettingsDep) -> FileResponse:
    return _result("seg", uid, store, spool, settings)


@router.get(
    "/studies/{uid}/sr",
    response_class=FileResponse,
    summary="DICOM SR (TID 1500) with the findings per level",
    responses=_file_responses("application/dicom"),
)
def get_sr(uid: StudyUID, store: StoreDep, spool: SpoolDep, settings: SettingsDep) -> FileResponse:
    return _result("sr", uid, store, spool, settings)


@router.get(
    "/studies/{uid}/preview.png",
    response_class=FileResponse,
    summary="Mid-sagittal preview with the structures and findings drawn in",
    responses=_file_responses("image/png"),
)
def get_preview(uid: StudyUID, store: StoreDep, spool: SpoolDep, settings: SettingsDep) -> FileResponse:
    return _result("preview", uid, store, spool, settings)


@router.post(
    "/studies/{uid}/process",
    response_model=ActionResponse,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Treat the study as complete now (skip the rest of the quiet period)",
    responses={409: {"model": Problem}, **_ERRORS},
)
def process_study(
    uid: StudyUID, store: StoreDep, spool: SpoolDep, settings: SettingsDep, client: RedisDep
) -> ActionResponse:
    """A study that has no usable series ends in state failed, with its reason in the study's error."""
    _record(store, spool, uid)
    record = actions.force_complete(settings, client, uid)
    return ActionResponse(study_uid=uid, detail=f"assembled: {record.state.value}", state=record.state)


@router.post(
    "/studies/{uid}/retry",
    response_model=ActionResponse,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Process a failed (or finished) study again",
    responses={409: {"model": Problem}, **_ERRORS},
)
def retry_study(
    uid: StudyUID, store: StoreDep, spool: SpoolDep, settings: SettingsDep, client: RedisDep
) -> ActionResponse:
    """Forgets the study's last job id, so the same content runs again, and re-runs series selection."""
    record = _record(store, spool, uid)
    if record.state in (StudyState.QUEUED, StudyState.PROCESSING):
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"study {uid} is {record.state.value}; retry when it is done"
        )
    record = actions.retry(settings, client, uid)
    return ActionResponse(study_uid=uid, detail=f"re-assembled: {record.state.value}", state=record.state)


@router.delete(
    "/studies/{uid}",
    response_model=ActionResponse,
    summary="Delete the study's instances, results and state",
    responses={409: {"model": Problem}, **_ERRORS},
)
def delete_study(
    request: Request, uid: StudyUID, store: StoreDep, spool: SpoolDep, settings: SettingsDep, client: RedisDep
) -> ActionResponse:
    """Refused while a worker processes the study: its results would reappear after the delete."""
    record = _record(store, spool, uid)
    if record.state == StudyState.PROCESSING:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"study {uid} is being processed; retry when it is done"
        )
    actions.delete_study(settings, client, uid)
    client.delete(request.app.state.outbox.status_key(uid))
    results_dir = settings.results_dir / uid
    if results_dir.is_dir():
        shutil.rmtree(results_dir)
    return ActionResponse(
        study_uid=uid, detail=f"study {uid} deleted at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
    )
