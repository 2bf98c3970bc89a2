"""STOW-RS (PS3.18 10.5): a multipart/related body of application/dicom parts, and its JSON response.

The body is parsed as it streams in (python-multipart's parser), each part spooled to a temporary file, so
a large study is never held in memory at once. The response is the Store Instances Response Module in
DICOM JSON: ReferencedSOPSequence for what was stored, FailedSOPSequence with a FailureReason for the rest.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pydicom
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from service.api.deps import BaseUrl, SpoolDep
from service.api.schemas import Problem
from service.api.uploads import (
    Rejection,
    UploadOutcome,
    copy_capped,
    record_received,
    store_file,
    upload_slot,
)

# PS3.18 table I.2-1 / PS3.4 annex B failure reasons
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_PROCESSING = 0x0110
_REASONS = {
    507: FAILURE_OUT_OF_RESOURCES,
    413: FAILURE_OUT_OF_RESOURCES,
    415: FAILURE_CANNOT_UNDERSTAND,
    400: FAILURE_CANNOT_UNDERSTAND,
}

MEMORY_PER_PART = 8 * 1024 * 1024


@dataclass
class Part:
    name: str
    content_type: str
    file: tempfile.SpooledTemporaryFile


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a multipart/related body whose parts are application/dicom, else 415."""
    if not content_type:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "Content-Type is missing")
    media, params = parse_options_header(content_type)
    if media != b"multipart/related":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f'STOW-RS expects multipart/related; type="application/dicom", got {media.decode(errors="replace")}',
        )
    part_type = params.get(b"type", b"application/dicom").strip(b'"').lower()
    if part_type != b"application/dicom":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f'only type="application/dicom" parts are accepted, got {part_type.decode(errors="replace")}',
        )
    boundary = params.get(b"boundary", b"").strip(b'"')
    if not boundary:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "multipart/related without a boundary")
    return boundary


async def iter_parts(chunks: AsyncIterator[bytes], boundary: bytes) -> list[Part]:
    """Every part of the body, each in a SpooledTemporaryFile; the caller closes them."""
    parts: list[Part] = []
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}

    def on_part_begin() -> None:
        headers.clear()
        parts.append(Part(f"part {len(parts) + 1}", "", tempfile.SpooledTemporaryFile(MEMORY_PER_PART)))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].file.write(data[start:end])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        part_type = headers.get(b"content-type", b"application/dicom").decode("latin-1")
        parts[-1].content_type = parse_options_header(part_type)[0].decode("latin-1")
        location = headers.get(b"content-location") or headers.get(b"content-id")
        if location:
            parts[-1].name = location.decode("latin-1")[:200]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except HTTPException:
        _close(parts)
        raise
    except Exception as exc:  # python-multipart raises its own parse errors on malformed bodies
        _close(parts)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"malformed multipart/related body ({exc})") from exc
    for p in parts:
        p.file.seek(0)
    return parts


def _close(parts: list[Part]) -> None:
    for p in parts:
        p.file.close()


def _uids_of(data: bytes) -> tuple[str | None, str | None]:
    """SOP Class and Instance UID of a part that failed, when its header can still be read."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        return str(ds.get("SOPClassUID") or "") or None, str(ds.get("SOPInstanceUID") or "") or None
    except Exception:  # the part is garbage: the failure item then carries only its reason
        return None, None


def _ref(sop_class: str | None, sop_uid: str | None) -> dict:
    item: dict = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [sop_uid]}
    return item


def stow_response(outcome: UploadOutcome, failed_bytes: dict[str, bytes], base_url: str) -> tuple[int, dict]:
    """(HTTP status, DICOM JSON): 200 all stored, 202 some failed, 409 none stored (PS3.18 10.5.3)."""
    body: dict = {}
    stored = outcome.accepted
    if stored:
        study_uid = stored[0].study_uid
        body["00081190"] = {"vr": "UR", "Value": [f"{base_url}studies/{study_uid}"]}
        body["00081199"] = {
            "vr": "SQ",
            "Value": [
                {
                    **_ref(s.sop_class_uid, s.sop_uid),
                    "00081190": {"vr": "UR", "Value": [f"{base_url}studies/{s.study_uid}"]},
                }
                for s in stored
            ],
        }
    if outcome.rejected:
        body["00081198"] = {
            "vr": "SQ",
            "Value": [_failed_item(r, failed_bytes.get(r.name)) for r in outcome.rejected],
        }
    if not outcome.rejected:
        return 200, body
    return (202 if stored else 409), body


def _failed_item(rejection: Rejection, data: bytes | None) -> dict:
    sop_class, sop_uid = _uids_of(data) if data else (None, None)
    item = _ref(sop_class, sop_uid)
    item["00081197"] = {"vr": "US", "Value": [_REASONS.get(rejection.status, FAILURE_PROCESSING)]}
    return item


# -- the route ------------------------------------------------------------------------------------------

router = APIRouter(tags=["dicomweb"])


@router.post(
    "/dicomweb/studies",
    summary='STOW-RS: store instances (multipart/related; type="application/dicom")',
    response_class=JSONResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"multipart/related": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses={
        200: {"content": {"application/dicom+json": {}}, "description": "every instance stored"},
        202: {"content": {"application/dicom+json": {}}, "description": "some instances failed"},
        409: {"content": {"application/dicom+json": {}}, "description": "no instance stored"},
        400: {"model": Problem},
        401: {"model": Problem},
        403: {"model": Problem},
        413: {"model": Problem},
        415: {"model": Problem},
    },
)
async def stow(request: Request, spool: SpoolDep, base: BaseUrl) -> JSONResponse:
    async with upload_slot(request):
        return await _store_parts(request, spool, base)


async def _store_parts(request: Request, spool, base: str) -> JSONResponse:
    instance_limit = request.app.state.settings.max_instance_mb * 1024 * 1024
    boundary = boundary_of(request.headers.get("content-type"))
    parts = await iter_parts(request.stream(), boundary)
    outcome = UploadOutcome()
    failed: dict[str, bytes] = {}
    try:
        if not parts:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "multipart/related body has no parts")

        def store_all() -> None:
            for part in parts:
                if part.content_type.lower() != "application/dicom":
                    outcome.rejected.append(Rejection(part.name, f"part is {part.content_type}", 415))
                    continue
                part.file.seek(0)
                head = part.file.read(65536)  # enough for the header's UIDs
                part.file.seek(0)
                incoming = spool.new_incoming()
                data = incoming if copy_capped(part.file, incoming, instance_limit) else Rejection(
                    part.name, f"over the instance size limit of {instance_limit} bytes (LUMBAR_AI_MAX_INSTANCE_MB)",
                    413)
                before = len(outcome.rejected)
                store_file(spool, part.name, data, outcome)
                if len(outcome.rejected) > before:
                    failed[part.name] = head
                part.file.close()

        await run_in_threadpool(store_all)
    finally:
        _close(parts)
    record_received(request, outcome)
    code, body = stow_response(outcome, failed, f"{base}/")
    return JSONResponse(body, status_code=code, media_type="application/dicom+json")
