"""Instances uploaded over HTTP go into the same spool as C-STOREd ones, one file at a time.

The spool's ``.received`` marker is what the assembler watches, so an upload triggers exactly what a
C-STORE triggers. Each file is stored on its own: a bad file is reported by name and the files before and
after it stay stored (nothing already accepted is lost). A zip is opened member by member, with its
declared and actual sizes checked against the upload limit, so a zip bomb cannot fill memory or disk.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from service import telemetry
from service.errors import InvalidUIDError, ReceiveError, SpoolFullError, UndecodableDatasetError
from service.receive.spool import Spool, StoredInstance

ZIP_MAGIC = b"PK\x03\x04"


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


def iter_files(name: str, stream: BinaryIO, max_bytes: int) -> Iterator[tuple[str, bytes | Rejection]]:
    """(name, bytes) for a plain file, or one pair per member of a zip; a Rejection for a broken zip."""
    stream.seek(0)
    head = stream.read(4)
    stream.seek(0)
    if head != ZIP_MAGIC:
        yield name, stream.read(max_bytes + 1)
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
            try:
                with archive.open(member) as fh:
                    data = fh.read(max_bytes - total + 1)
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
                yield member_name, Rejection(member_name, f"zip member cannot be read ({exc})", 400)
                continue
            total += len(data)
            if total > max_bytes:
                yield member_name, Rejection(member_name, "zip expands past the upload limit", 413)
                return
            yield member_name, data


def store_file(spool: Spool, name: str, data: bytes | Rejection, outcome: UploadOutcome) -> None:
    """Store one file into the spool and record the result in ``outcome``; never raises for bad input."""
    if isinstance(data, Rejection):
        outcome.rejected.append(data)
        return
    if outcome.spool_full:
        outcome.rejected.append(Rejection(name, "not attempted: the spool is full", 507))
        return
    try:
        outcome.accepted.append(spool.store_file_bytes(data))
    except UndecodableDatasetError as exc:
        outcome.rejected.append(Rejection(name, f"not DICOM: {exc}", 415))
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
    for status in (507, 413, 415, 400, 500):
        if status in statuses:
            return status
    return 400


def record_received(request, outcome: UploadOutcome) -> None:
    """Count new instances for /metrics (source="api"), as the listener counts its C-STOREs."""
    new = sum(not s.duplicate for s in outcome.accepted)
    if new:
        state = request.app.state
        telemetry.incr(
            state.redis, state.settings.stream_prefix, telemetry.INSTANCES_RECEIVED, new, source="api"
        )
