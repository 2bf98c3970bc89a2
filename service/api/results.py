"""Where a study's results lie on disk, and which of them exist now.

The worker writes ``<results_dir>/<StudyInstanceUID>/`` and records the paths in the study's state. A path
from Redis is served only when it resolves inside the results directory: Redis is shared with other
processes, and a record must never be able to point the API at an arbitrary file.
"""

from __future__ import annotations

from pathlib import Path

from service.queue.state import StudyRecord

FILE_NAMES = {"report": "report.json", "seg": "seg.dcm", "sr": "sr.dcm", "preview": "preview.png"}
MEDIA_TYPES = {
    "report": "application/json",
    "seg": "application/dicom",
    "sr": "application/dicom",
    "preview": "image/png",
}


def result_path(results_dir: Path, record: StudyRecord, kind: str) -> Path | None:
    """The file of one result kind when it exists inside ``results_dir``; None otherwise."""
    root = results_dir.resolve()
    candidates = []
    recorded = record.results.get(kind)
    if recorded:
        candidates.append(Path(recorded))
    candidates.append(root / record.study_uid / FILE_NAMES[kind])
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved.is_relative_to(root) and resolved.is_file():
            return resolved
    return None


def available(results_dir: Path, record: StudyRecord) -> list[str]:
    """Kinds of results present on disk, in a fixed order."""
    return [kind for kind in FILE_NAMES if result_path(results_dir, record, kind) is not None]
