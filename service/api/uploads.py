"""Instances uploaded over HTTP go into the same spool as C-STOREd ones, one file at a time.

The spool's ``.received`` marker is what the assembler watches, so an upload triggers exactly what a
C-STORE triggers. Each file is stored on its own: a bad file is reported by name and the files before and
after it stay stored (nothing already accepted is lost). Files and zip members are copied to the spool in
chunks and capped at the instance size limit, and a zip's declared and actual sizes are checked against the
upload limit, so neither a zip bomb nor a huge file can fill memory or disk.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fastapi import HTTPException, status

from service import telemetry
from service.errors import (
    InvalidUIDError,
    NotDicomError,
    ReceiveError,
    SpoolFullError,
    UndecodableDatasetError,
)
from service.receive.spool import Spool, StoredInstance

ZIP_MAGIC = b"PK\x03\x04"
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Rejection:
    """One file that was not stored, with why, and the HTTP status that reason maps to."""

    name: str
    reason: str
    status: int


@dataclass
class UploadOutcome:
    accepted: list[StoredInstance] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    spool_full: bool = False


def copy_capped(source: BinaryIO, target: Path, cap: int) -> bool:
    """Copy ``source`` into ``target`` in chunks; False (and no file) when it holds more than ``cap`` bytes.

    An upload is never held in memory whole: it goes from the request's temp file to the spool's."""
    written = 0
    with open(target, "wb") as out:
        while chunk := source.read(COPY_CHUNK):
            written += len(chunk)
            if written > cap:
                break
            out.write(chunk)
    if written > cap:
        target.unlink(missing_ok=True)
        return False
    return True


def iter_files(spool: Spool, name: str, stream: BinaryIO, max_instance_bytes: int, max_bytes: int
               ) -> Iterator[tuple[str, Path | Rejection]]:
    """(name, a file in the spool's incoming folder) for a plain file, or one pair per member of a zip; a
    Rejection for a broken zip, a file or member over ``max_instance_bytes``, or a zip expanding past
    ``max_bytes``. The caller stores or removes each incoming file before the next is written."""
    too_big = f"over the instance size limit of {max_instance_bytes} bytes (LUMBAR_AI_MAX_INSTANCE_MB)"
    stream.seek(0)
    head = stream.read(4)
    stream.seek(0)
    if head != ZIP_MAGIC:
        incoming = spool.new_incoming()
        yield name, (incoming if copy_capped(stream, incoming, max_instance_bytes) else Rejection(name, too_big, 413))
        return
    try:
        archive = zipfile.ZipFile(stream)
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        yield name, Rejection(name, f"zip archive cannot be read ({exc})", 400)
        return
    declared = sum(m.file_size for m in members)
    if declared > max_bytes:
        yield name, Rejection(name, f"zip expands to {declared} bytes, over the upload limit", 413)
        return
    total = 0
    with archive:
        for member in members:
            member_name = f"{name}:{member.filename}"
            if member.filename.startswith("__MACOSX/") or member.filename.rsplit("/", 1)[-1] == ".DS_Store":
                continue
            if member.file_size > max_instance_bytes:
                yield member_name, Rejection(member_name, too_big, 413)
                continue
            incoming = spool.new_incoming()
            try:
                with archive.open(member) as fh:
                    fits = copy_capped(fh, incoming, min(max_instance_bytes, max_bytes - total))
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
                incoming.unlink(missing_ok=True)
                yield member_name, Rejection(member_name, f"zip member cannot be read ({exc})", 400)
                continue
            if not fits:
                yield member_name, Rejection(member_name, "zip member expands past its declared size or the "
                                                          "upload limit", 413)
                return
            total += incoming.stat().st_size
            yield member_name, incoming


def store_file(spool: Spool, name: str, data: Path | Rejection, outcome: UploadOutcome) -> None:
    """Store one incoming file into the spool and record the result in ``outcome``; never raises for bad
    input. The incoming file is consumed."""
    if isinstance(data, Rejection):
        outcome.rejected.append(data)
        return
    if outcome.spool_full:
        data.unlink(missing_ok=True)
        outcome.rejected.append(Rejection(name, "not attempted: the spool is full", 507))
        return
    try:
        outcome.accepted.append(spool.store_incoming(data))
    except NotDicomError as exc:
        outcome.rejected.append(Rejection(name, f"not DICOM: {exc}", 415))
    except UndecodableDatasetError as exc:  # DICOM, but truncated or inconsistent
        outcome.rejected.append(Rejection(name, f"DICOM file cannot be read: {exc}", 400))
    except InvalidUIDError as exc:
        outcome.rejected.append(Rejection(name, f"invalid UID: {exc}", 400))
    except SpoolFullError as exc:
        outcome.spool_full = True
        outcome.rejected.append(Rejection(name, f"spool full: {exc}", 507))
    except ReceiveError as exc:
        outcome.rejected.append(Rejection(name, f"not stored: {exc}", 500))


def overall_status(outcome: UploadOutcome) -> int:
    """202 when every file was stored; else the most telling 4xx/5xx among the rejections."""
    if not outcome.rejected:
        return 202
    statuses = {r.status for r in outcome.rejected}
    for code in (507, 413, 415, 400, 500):
        if code in statuses:
            return code
    return 400


@contextlib.asynccontextmanager
async def upload_slot(request) -> AsyncIterator[None]:
    """One of the API process's ``max_concurrent_uploads`` upload slots, or 429 with Retry-After: each
    upload holds temp files and a thread while it is stored, so their number is bounded."""
    state = request.app.state
    if getattr(state, "uploads_in_progress", 0) >= state.settings.max_concurrent_uploads:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"{state.settings.max_concurrent_uploads} uploads are in progress; try again shortly",
                            headers={"Retry-After": "5"})
    state.uploads_in_progress = getattr(state, "uploads_in_progress", 0) + 1
    try:
        yield
    finally:
        state.uploads_in_progress -= 1


def record_received(request, outcome: UploadOutcome) -> None:
    """Count new instances for /metrics (source="api"), as the listener counts its C-STOREs."""
    new = sum(not s.duplicate for s in outcome.accepted)
    if new:
        state = request.app.state
        telemetry.incr(
            state.redis, state.settings.stream_prefix, telemetry.INSTANCES_RECEIVED, new, source="api"
        )
