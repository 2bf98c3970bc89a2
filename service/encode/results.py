"""Results on disk: ``<results_dir>/<StudyInstanceUID>/`` with one file per kind, each written atomically.

Layout (the REST API serves these names)::

    seg.dcm  sr.dcm  preview.dcm  preview.png  report.json

Each file is written to a temporary name in the same folder, fsynced, renamed over the final name and the
folder fsynced, so a reader (the API, the delivery step) sees either the old complete file or the new one,
and a worker killed half-way leaves nothing half-written under a final name. The job is acknowledged
only after all of them are in place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import uuid
from pathlib import Path

from pydicom.dataset import Dataset

from service.errors import EncodeError
from service.receive.uids import validate_uid

FILE_NAMES = {
    "seg": "seg.dcm",
    "sr": "sr.dcm",
    "preview_dcm": "preview.dcm",
    "preview": "preview.png",
    "report": "report.json",
}
DICOM_KINDS = ("seg", "sr", "preview_dcm")
"""Result kinds that are DICOM instances and go to the PACS."""


def study_results_dir(results_dir: Path, study_uid: str) -> Path:
    return Path(results_dir) / validate_uid(study_uid, "StudyInstanceUID")


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EncodeError(f"cannot write {path.name} in {path.parent}: {exc.strerror}") from exc
    _fsync_dir(path.parent)


def write_results(results_dir: Path, study_uid: str, files: dict[str, bytes]) -> dict[str, str]:
    """Write each kind's bytes under its fixed name; returns kind -> absolute path."""
    unknown = set(files) - set(FILE_NAMES)
    if unknown:
        raise ValueError(f"unknown result kinds {sorted(unknown)}")
    folder = study_results_dir(results_dir, study_uid)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EncodeError(f"cannot create results folder for study {study_uid}: {exc.strerror}") from exc
    paths = {}
    for kind, data in files.items():
        path = folder / FILE_NAMES[kind]
        write_atomic(path, data)
        paths[kind] = str(path.resolve())
    _fsync_dir(folder.parent)
    return paths


def delivered_marker(results_dir: Path, study_uid: str, destination: str) -> Path:
    """The file that says this study's results reached ``destination`` (its ``describe`` string).

    It lives beside the results, not in Redis, so that a Redis that lost its data does not make the
    reconciliation send a delivered result a second time."""
    key = hashlib.sha256(destination.encode()).hexdigest()[:16]
    return study_results_dir(results_dir, study_uid) / f".delivered-{key}"


def mark_delivered(results_dir: Path, study_uid: str, destination: str, job_id: str) -> None:
    write_atomic(delivered_marker(results_dir, study_uid, destination), job_id.encode())


def was_delivered(results_dir: Path, study_uid: str, destination: str, job_id: str) -> bool:
    """Whether the results of this job (not an earlier one of the same study) reached ``destination``."""
    try:
        return delivered_marker(results_dir, study_uid, destination).read_bytes().decode() == job_id
    except (OSError, UnicodeDecodeError):
        return False


def results_job_id(results_dir: Path, study_uid: str) -> str | None:
    """The job id in the study's report.json, or None without a complete, readable report."""
    try:
        report = json.loads((study_results_dir(results_dir, study_uid) / FILE_NAMES["report"]).read_text())
    except (OSError, ValueError):
        return None
    job_id = report.get("job_id") if isinstance(report, dict) else None
    return job_id if isinstance(job_id, str) else None


def sweep_expired(results_dir: Path, retention_days: float, now: float | None = None) -> list[str]:
    """Remove study result folders untouched for longer than the retention; returns the study UIDs removed.

    A folder's age is that of its newest file, so a study processed again restarts its retention.
    """
    root = Path(results_dir)
    if not root.is_dir():
        return []
    limit = (time.time() if now is None else now) - retention_days * 86400.0
    removed = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir():
            continue
        newest = max((p.stat().st_mtime for p in folder.iterdir()), default=folder.stat().st_mtime)
        if newest < limit:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
