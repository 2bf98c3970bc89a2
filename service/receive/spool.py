"""The durable spool: every acknowledged instance is a complete, fsynced file laid out by validated UIDs.

Layout::

    <root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   the Part-10 file as received
    <root>/<StudyInstanceUID>/.received                                   mtime = last instance stored
    <root>/<StudyInstanceUID>/.assembled                                  content digest last assembled

Both the C-STORE handler and the REST upload call :meth:`Spool.store_file_bytes` (or
:meth:`Spool.store_dataset`); nothing else is needed to get a study assembled and queued: storing touches
the study's ``.received`` marker, and the assembler (``lumbar-ai listen``) watches the markers, so an upload
through the API triggers exactly what a C-STORE does. The spool never talks to Redis, so receiving goes on
while Redis is down.

A received file is written to ``<root>/.incoming/`` (by the caller in chunks, or from bytes), checked there
without reading its pixels (instance_check.py), then fdatasynced, renamed to its final name and the directory
fsynced; a crash leaves at most a ``.*.tmp`` file, which listings ignore and
:meth:`Spool.remove_stale_temp_files` deletes.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from service.errors import ReceiveError, SpoolFullError, UndecodableDatasetError
from service.receive.instance_check import PIXEL_KEYWORDS, check_part10_file
from service.receive.uids import validate_uid

INCOMING = ".incoming"
"""Folder of the spool where received files are written before they are checked and moved into place."""
MARKER = ".received"
ASSEMBLED = ".assembled"
SUFFIX = ".dcm"
FREE_SPACE_TTL_S = 1.0


@dataclass(frozen=True)
class StoredInstance:
    """What became of one instance: where it lies and whether it was new."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int
    duplicate: bool
    """An identical file was already in the spool; nothing was written."""
    ignored: bool
    """Kept, but not an MR image: never a candidate for series selection (SR, PR, CT, a report...)."""


@dataclass(frozen=True)
class SpooledFile:
    """One instance file found in the spool (from the directory listing only; no header read)."""

    series_uid: str
    sop_uid: str
    path: Path
    size: int


def _is_mr_image(ds: Dataset) -> bool:
    return str(ds.get("Modality", "")).upper() == "MR" and any(k in ds for k in PIXEL_KEYWORDS)


def _write_error(path: Path, exc: OSError) -> ReceiveError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpoolFullError(f"no space left writing {path.name}")
    return ReceiveError(f"could not write {path.name}: {exc.strerror}")


def _same_content(a: Path, b: Path, chunk: int = 1 << 20) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Writes received instances durably and lists what is there; one instance per SOP Instance UID."""

    def __init__(self, root: Path, reserve_bytes: int = 0, fsync: bool = True) -> None:
        self.root = Path(root)
        self.reserve_bytes = int(reserve_bytes)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self._free_lock = threading.Lock()
        self._free = 0
        self._free_at = 0.0

    @classmethod
    def from_settings(cls, settings) -> Spool:
        return cls(settings.spool_dir, settings.disk_reserve_mb * 1024 * 1024, settings.fsync)

    # -- writing -------------------------------------------------------------------------------------------

    def store_file_bytes(self, data: bytes) -> StoredInstance:
        """Store one Part-10 file given as bytes (see :meth:`store_incoming`)."""
        incoming = self.new_incoming()
        try:
            fd = os.open(incoming, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        except OSError as exc:
            incoming.unlink(missing_ok=True)
            raise _write_error(incoming, exc) from exc
        return self.store_incoming(incoming)

    def new_incoming(self) -> Path:
        """A fresh temp file name in the spool, for a caller that writes a received file in chunks, so that
        an instance of any size is never held in memory; pass it to :meth:`store_incoming`."""
        folder = self.root / INCOMING
        folder.mkdir(exist_ok=True)
        return folder / f".{uuid.uuid4().hex}.tmp"

    def store_incoming(self, incoming: Path) -> StoredInstance:
        """Check and store one Part-10 file written to ``incoming`` (new_incoming), exactly as received
        (compressed data stays compressed); the temp file is consumed whatever happens.

        Raises UndecodableDatasetError (not DICOM, truncated, garbage, pixel data shorter than its header),
        InvalidUIDError (a UID that could steer the path), SpoolFullError (below the disk reserve or out of
        space; no partial file is left).
        """
        try:
            size = incoming.stat().st_size
            ds = check_part10_file(incoming, size)
            study_uid = validate_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
            series_uid = validate_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
            sop_uid = validate_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
            sop_class = validate_uid(ds.get("SOPClassUID"), "SOPClassUID")
            transfer_syntax = validate_uid(ds.file_meta.get("TransferSyntaxUID"), "TransferSyntaxUID")
            path = self.instance_path(study_uid, series_uid, sop_uid)
            duplicate = self._place(incoming, path, size)
        finally:
            incoming.unlink(missing_ok=True)
        self._touch_marker(study_uid)
        return StoredInstance(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            sop_class_uid=sop_class,
            transfer_syntax_uid=transfer_syntax,
            path=path,
            size=size,
            duplicate=duplicate,
            ignored=not _is_mr_image(ds),
        )

    def store_dataset(self, ds: Dataset) -> StoredInstance:
        """Store a pydicom dataset (it must carry file_meta with its TransferSyntaxUID)."""
        buffer = io.BytesIO()
        try:
            ds.save_as(buffer, enforce_file_format=True)
        except Exception as exc:
            raise UndecodableDatasetError(
                f"dataset could not be encoded ({type(exc).__name__}: {exc})"
            ) from exc
        return self.store_file_bytes(buffer.getvalue())

    def _place(self, incoming: Path, path: Path, size: int) -> bool:
        """Move the checked file to its final name durably; True when an identical file was already there
        (nothing written)."""
        try:
            existing = os.stat(path)
        except FileNotFoundError:
            existing = None
        if existing is not None and existing.st_size == size and _same_content(path, incoming):
            return True
        self._reserve(size)
        try:
            if self.fsync:
                fd = os.open(incoming, os.O_RDONLY)
                try:
                    os.fdatasync(fd)  # data and size; the name is made durable by the directory fsync
                finally:
                    os.close(fd)
            try:
                os.replace(incoming, path)
            except FileNotFoundError:  # first instance of its series: create the directories
                self._ensure_dir(path.parent)
                os.replace(incoming, path)
            if self.fsync:
                _fsync_dir(path.parent)
        except OSError as exc:
            raise _write_error(path, exc) from exc
        return False

    def _reserve(self, size: int) -> None:
        """SpoolFullError when writing size bytes would go below the reserve.

        Free space is read from the filesystem at most every FREE_SPACE_TTL_S and counted down by what
        is written in between, which keeps a statvfs call off the path of every instance.
        """
        with self._free_lock:
            now = time.monotonic()
            if now - self._free_at > FREE_SPACE_TTL_S:
                self._free = shutil.disk_usage(self.root).free
                self._free_at = now
            if self._free - size < self.reserve_bytes:
                self._free_at = 0.0  # look again next time: space may have been freed
                raise SpoolFullError(
                    f"spool has {self._free // 2**20} MiB free, reserve is {self.reserve_bytes // 2**20} MiB"
                )
            self._free -= size

    def _ensure_dir(self, directory: Path) -> None:
        """Create study/series directories, fsyncing each parent so a new directory survives a crash."""
        missing = []
        d = directory
        while not d.exists() and d != self.root:
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            d.mkdir(exist_ok=True)
            if self.fsync:
                _fsync_dir(d.parent)

    def _touch_marker(self, study_uid: str) -> None:
        marker = self.root / study_uid / MARKER
        try:
            os.utime(marker)
        except FileNotFoundError:
            marker.touch()

    # -- reading -------------------------------------------------------------------------------------------

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return (
            self.root
            / validate_uid(study_uid, "StudyInstanceUID")
            / validate_uid(series_uid, "SeriesInstanceUID")
            / (validate_uid(sop_uid, "SOPInstanceUID") + SUFFIX)
        )

    def study_dir(self, study_uid: str) -> Path:
        return self.root / validate_uid(study_uid, "StudyInstanceUID")

    def studies(self) -> list[str]:
        """Study UIDs present in the spool (directories whose name is a valid UID)."""
        out = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.is_dir() and _valid_name(entry.name):
                    out.append(entry.name)
        return sorted(out)

    def last_received(self, study_uid: str) -> float | None:
        """Wall-clock time of the last instance stored for the study (its marker's mtime), None if absent."""
        try:
            return (self.study_dir(study_uid) / MARKER).stat().st_mtime
        except FileNotFoundError:
            return None

    def instances(self, study_uid: str) -> list[SpooledFile]:
        """Every complete instance file of a study, in a stable order; temp files are skipped."""
        study_dir = self.study_dir(study_uid)
        out: list[SpooledFile] = []
        for series_dir in _scandirs(study_dir):
            with os.scandir(series_dir.path) as files:
                for f in files:
                    if f.name.endswith(SUFFIX) and not f.name.startswith(".") and f.is_file():
                        out.append(
                            SpooledFile(
                                series_dir.name, f.name[: -len(SUFFIX)], Path(f.path), f.stat().st_size
                            )
                        )
        out.sort(key=lambda s: (s.series_uid, s.sop_uid))
        return out

    def content_digest(self, study_uid: str) -> str:
        """Digest of what the study holds (SOP UIDs and sizes): changes whenever an instance is added."""
        return digest_instances((f.sop_uid, f.size) for f in self.instances(study_uid))

    def read_assembled(self, study_uid: str) -> str | None:
        """The content digest the assembler last turned into a job (or a failure), None if never."""
        try:
            return (self.study_dir(study_uid) / ASSEMBLED).read_text(encoding="ascii").strip() or None
        except FileNotFoundError:
            return None

    def write_assembled(self, study_uid: str, digest: str) -> None:
        """Remember that this content was assembled; losing it in a crash only repeats an idempotent step."""
        target = self.study_dir(study_uid) / ASSEMBLED
        tmp = target.with_name(f".assembled.{uuid.uuid4().hex}.tmp")
        tmp.write_text(digest, encoding="ascii")
        os.replace(tmp, target)

    def delete_study(self, study_uid: str) -> bool:
        study_dir = self.study_dir(study_uid)
        if not study_dir.exists():
            return False
        shutil.rmtree(study_dir)
        return True

    def remove_stale_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Delete temp files left by a crash; young ones may belong to a write in progress elsewhere."""
        removed = 0
        cutoff = time.time() - older_than_s
        for study_uid in self.studies():
            for series_dir in _scandirs(self.root / study_uid):
                with os.scandir(series_dir.path) as files:
                    for f in files:
                        if f.name.startswith(".") and f.name.endswith(".tmp") and f.stat().st_mtime < cutoff:
                            Path(f.path).unlink(missing_ok=True)
                            removed += 1
        incoming = self.root / INCOMING
        if incoming.is_dir():
            for f in incoming.iterdir():
                if f.name.endswith(".tmp") and f.stat().st_mtime < cutoff:
                    f.unlink(missing_ok=True)
                    removed += 1
        return removed


def digest_instances(items: Iterator[tuple[str, int]] | list[tuple[str, int]]) -> str:
    """sha256 over sorted "sop_uid:size" lines: the content identity used for job ids."""
    h = hashlib.sha256()
    for sop_uid, size in sorted(items):
        h.update(f"{sop_uid}:{size}\n".encode())
    return h.hexdigest()


def _valid_name(name: str) -> bool:
    return bool(name) and len(name) <= 64 and all(c.isdigit() or c == "." for c in name)


def _scandirs(directory: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as entries:
            return sorted((e for e in entries if e.is_dir() and _valid_name(e.name)), key=lambda e: e.name)
    except FileNotFoundError:
        return []
