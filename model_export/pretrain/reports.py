"""Radiology reports for text pretraining, alone or paired with their studies.

Reports come from a ``report.txt`` in a study's folder (generated studies have one; a user's export can
be laid out the same way) or from a CSV/JSONL file of (StudyInstanceUID, report) rows, matched to the
DICOM studies under the data folder by their StudyInstanceUID. Report text is patient data: it is never
logged; only counts and study names are.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from service.errors import ConfigError

log = logging.getLogger(__name__)
UID_KEYS = ("StudyInstanceUID", "study_instance_uid", "study_uid", "uid")
TEXT_KEYS = ("report", "text", "report_text")


@dataclass
class Report:
    key: str
    """The study name (folder) or StudyInstanceUID the report belongs to."""
    text: str


def _pick(row: dict, keys: tuple[str, ...], path: Path, line: int) -> str:
    for k in keys:
        if k in row and row[k] is not None and str(row[k]).strip():
            return str(row[k]).strip()
    raise ConfigError(f"{path}, row {line}: needs one of the columns {', '.join(keys)}")


def read_reports_file(path: Path) -> dict[str, str]:
    """StudyInstanceUID -> report text from a CSV (with a header row) or a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"reports file {path} does not exist")
    out: dict[str, str] = {}
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}, line {i}: not JSON ({exc.msg})") from exc
                if not isinstance(row, dict):
                    raise ConfigError(f"{path}, line {i}: expected an object with StudyInstanceUID and report")
                out[_pick(row, UID_KEYS, path, i)] = _pick(row, TEXT_KEYS, path, i)
        else:
            with path.open(newline="", encoding="utf-8") as handle:
                for i, row in enumerate(csv.DictReader(handle), start=2):
                    out[_pick(row, UID_KEYS, path, i)] = _pick(row, TEXT_KEYS, path, i)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text") from exc
    if not out:
        raise ConfigError(f"{path} holds no reports")
    return out


def report_txt_files(data_dir: Path) -> dict[str, str]:
    """Study folder name -> report text for every report.txt under ``data_dir``."""
    data_dir = Path(data_dir)
    out = {}
    for path in sorted(data_dir.rglob("report.txt")):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            folder = path.parent
            key = str(folder.relative_to(data_dir)).replace("/", "_") if folder != data_dir else data_dir.name
            out[key] = text
    return out


def collect_reports(data_dir: Path | None, reports_file: Path | None) -> list[Report]:
    """All reports (for text-only pretraining): report.txt files, then the rows of the reports file."""
    reports: list[Report] = []
    if data_dir is not None:
        reports += [Report(k, t) for k, t in report_txt_files(data_dir).items()]
    if reports_file is not None:
        reports += [Report(k, t) for k, t in read_reports_file(reports_file).items()]
    if not reports:
        raise ConfigError("no reports found: give --data with report.txt files or --reports FILE")
    return reports


def match_reports(study_names: list[str], study_uids: dict[str, str], data_dir: Path,
                  reports_file: Path | None) -> dict[str, str]:
    """Study name -> report for the studies that have one (report.txt first, then by StudyInstanceUID)."""
    by_folder = report_txt_files(data_dir)
    by_uid = read_reports_file(reports_file) if reports_file is not None else {}
    out = {}
    for name in study_names:
        if name in by_folder:
            out[name] = by_folder[name]
        elif study_uids.get(name) in by_uid:
            out[name] = by_uid[study_uids[name]]
    log.info("%d of %d studies have a report", len(out), len(study_names))
    return out
