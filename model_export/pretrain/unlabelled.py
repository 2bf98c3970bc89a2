"""Unlabelled studies for pretraining, read from whatever an archive export holds.

A folder is walked once. DICOM files (any name, found by their header) are grouped by StudyInstanceUID,
and the service's own series selection (``service.assemble.selection``) picks the sagittal T2 and T1 of
each study, so localizers, axial series and our own outputs never become pretraining input. Volume files
(NIfTI, MHA, NRRD) are one study each; label maps (``labels*``, ``mask*``, ``seg*`` or files in a
``labels``/``masks`` folder) are ignored, so generated studies and labelled case folders can be reused
with their labels unseen.

Real archives hold broken things: a file that cannot be read or decoded is reported by name and skipped,
a study left without a usable series is reported and skipped; only an empty result is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.errors import ConfigError, InferenceError

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
LABEL_PREFIXES = ("label", "mask", "seg")
LABEL_FOLDERS = {"labels", "masks", "segmentations", "labelstr", "labelsts"}
MAX_LABEL_VALUES = 64
"""An integer volume with this few distinct values is a label map (e.g. SPIDER masks), not an MR image."""
SKIPPED_SUFFIXES = (".txt", ".json", ".csv", ".jsonl", ".png", ".jpg", ".md", ".yaml", ".raw", ".zraw", ".py")


@dataclass
class UnlabelledStudy:
    name: str
    t2: np.ndarray | None
    t1: np.ndarray | None
    """On the T2 grid when both are present; (slices, rows, cols) float32."""
    study_uid: str | None = None
    folder: Path | None = None


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class Discovery:
    loaders: list[tuple[str, Callable[[], UnlabelledStudy]]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    study_uids: dict[str, str] = field(default_factory=dict)
    """study name -> StudyInstanceUID (DICOM studies only), for matching reports by UID."""
    folders: dict[str, Path] = field(default_factory=dict)
    """study name -> the folder holding it, for matching report.txt files."""


def _is_label_file(path: Path) -> bool:
    return path.name.lower().startswith(LABEL_PREFIXES) or any(p.name.lower() in LABEL_FOLDERS for p in path.parents)


def _volume_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def _read_header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # pydicom raises many types for files that are not DICOM
        return None


def discover_unlabelled(data_dir: Path) -> Discovery:
    """Every study under ``data_dir`` as (name, loader); unreadable files are listed in ``skipped``."""
    from service.assemble.headers import header_from_dataset

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ConfigError(f"data folder {data_dir} does not exist")
    found = Discovery()
    studies: dict[str, list[tuple[Path, object]]] = {}
    study_folder: dict[str, Path] = {}
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        rel = str(path.relative_to(data_dir))
        if _volume_suffix(path) is not None:
            if _is_label_file(path.relative_to(data_dir)) or path.name.lower().endswith(".raw"):
                continue
            name = rel[: -len(_volume_suffix(path))].replace("/", "_")
            found.loaders.append((name, lambda p=path, n=name: _read_volume(p, n)))
            found.folders[name] = path.parent
            continue
        if path.name.lower().endswith(SKIPPED_SUFFIXES) or path.name.startswith("."):
            continue
        ds = _read_header(path)
        if ds is None or ("SOPClassUID" not in ds and "Rows" not in ds):
            found.skipped.append(Skipped(rel, "not a readable DICOM file"))
            continue
        study_uid = str(ds.get("StudyInstanceUID", "") or "") or f"folder:{path.parent.relative_to(data_dir)}"
        series_uid = str(ds.get("SeriesInstanceUID", "") or "") or f"folder:{path.parent}"
        sop_uid = str(ds.get("SOPInstanceUID", "") or "") or rel
        header = header_from_dataset(ds, series_uid, sop_uid, path.stat().st_size)
        studies.setdefault(study_uid, []).append((path, header))
        study_folder.setdefault(study_uid, path.parent)
    for study_uid, members in studies.items():
        folder = _common_folder([p for p, _ in members], data_dir)
        name = str(folder.relative_to(data_dir)).replace("/", "_") if folder != data_dir else data_dir.name
        if name in found.folders:  # two studies in one folder
            name = f"{name}_{study_uid[-8:]}"
        found.loaders.append((name, lambda m=members, n=name, u=study_uid: _read_dicom_study(m, n, u, data_dir,
                                                                                              found.skipped)))
        found.folders[name] = folder
        if not study_uid.startswith("folder:"):
            found.study_uids[name] = study_uid
    found.loaders.sort(key=lambda item: item[0])
    for s in found.skipped:
        log.warning("skipped %s: %s", s.path, s.reason)
    return found


def _common_folder(paths: list[Path], root: Path) -> Path:
    parts = [p.parent.parts for p in paths]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    folder = Path(*common)
    # a study folder may keep its series in subfolders (generated studies: dicom/<series>/): name the
    # study by the nearest folder up to the data folder that holds its report.txt or truth.json
    for candidate in [folder, *folder.parents]:
        if candidate != root and root not in candidate.parents:
            break
        if (candidate / "report.txt").is_file() or (candidate / "truth.json").is_file():
            return candidate
        if candidate == root:
            break
    return folder


def _read_volume(path: Path, name: str) -> UnlabelledStudy:
    import SimpleITK as sitk

    from model_export.data import read_oriented

    image = read_oriented(path)  # ConfigError naming the file when unreadable
    array = sitk.GetArrayFromImage(image)
    if array.ndim != 3:
        raise ConfigError(f"{path.name}: expected a 3-D volume, got {array.ndim} dimensions")
    if np.issubdtype(array.dtype, np.integer) and len(np.unique(array)) <= MAX_LABEL_VALUES:
        raise ConfigError(f"{path.name}: looks like a label map ({len(np.unique(array))} distinct values), not an image")
    pixels = array.astype(np.float32)
    is_t1 = "t1" in path.name.lower().replace("-", "_").split(".")[0].split("_")
    return UnlabelledStudy(name, t2=None if is_t1 else pixels, t1=pixels if is_t1 else None, folder=path.parent)


def _decodable(paths: list[Path], skipped: list[Skipped], root: Path) -> list[Path]:
    """The files whose pixel data decodes; the others are reported by name."""
    import pydicom

    good = []
    for p in paths:
        try:
            pydicom.dcmread(p).pixel_array  # noqa: B018 - decoding is the check
            good.append(p)
        except Exception as exc:
            skipped.append(Skipped(str(p.relative_to(root)), f"pixel data not decodable ({type(exc).__name__})"))
            log.warning("skipped %s: pixel data not decodable (%s)", p.relative_to(root), type(exc).__name__)
    return good


def _load_tolerant(paths: list[Path], skipped: list[Skipped], root: Path):
    from service.infer.series import load_series

    try:
        return load_series(paths)
    except InferenceError:
        good = _decodable(paths, skipped, root)
        if len(good) < 3:
            raise
        return load_series(good)


def _read_dicom_study(members: list, name: str, study_uid: str, root: Path, skipped: list[Skipped]
                      ) -> UnlabelledStudy:
    from service.assemble.rules import load_rules
    from service.assemble.selection import select_series
    from service.infer.series import resample_onto

    headers = [h for _, h in members]
    path_of = {h.sop_uid: p for p, h in members}
    selection = select_series(headers, load_rules())
    if selection.error:
        raise ConfigError(f"study {name}: {selection.error}")
    volumes = {}
    for role in ("t2", "t1"):
        chosen = getattr(selection, role)
        if chosen is None:
            continue
        paths = sorted(path_of[h.sop_uid] for h in headers if h.series_uid == chosen.series_uid)
        try:
            volumes[role] = _load_tolerant(paths, skipped, root)
        except InferenceError as exc:
            skipped.append(Skipped(f"{name} ({role.upper()} series)", str(exc)))
            log.warning("study %s: %s series skipped: %s", name, role.upper(), exc)
    if not volumes:
        raise ConfigError(f"study {name}: no sagittal series could be read")
    t2, t1 = volumes.get("t2"), volumes.get("t1")
    t1_pixels = None
    if t1 is not None:
        t1_pixels = t1.pixels if t2 is None else resample_onto(t1, t2)
    return UnlabelledStudy(name, t2=None if t2 is None else t2.pixels.astype(np.float32),
                           t1=None if t1_pixels is None else t1_pixels.astype(np.float32),
                           study_uid=None if study_uid.startswith("folder:") else study_uid)


def iter_unlabelled(data_dir: Path, skipped: list[Skipped], limit: int | None = None,
                    names: set[str] | None = None, found: Discovery | None = None) -> Iterator[UnlabelledStudy]:
    """Studies one at a time (an archive does not fit in memory at full resolution).

    A study that cannot be read is appended to ``skipped`` and passed over, never fatal by itself;
    ``names`` restricts reading to those studies (e.g. the ones with a report).
    """
    found = found or discover_unlabelled(data_dir)
    skipped.extend(found.skipped)  # the study loaders report broken files into found.skipped
    seen = len(found.skipped)
    count = 0
    for name, load in found.loaders:
        if limit is not None and count >= limit:
            break
        if names is not None and name not in names:
            continue
        try:
            study = load()
        except (ConfigError, InferenceError) as exc:
            skipped.append(Skipped(name, str(exc)))
            log.warning("skipped: %s", exc)
            study = None
        skipped.extend(found.skipped[seen:])
        seen = len(found.skipped)
        if study is None:
            continue
        study.folder = study.folder or found.folders.get(name)
        count += 1
        yield study


def load_unlabelled(data_dir: Path, limit: int | None = None) -> tuple[list[UnlabelledStudy], list[Skipped]]:
    """Every readable study in memory, and what was skipped; no readable study at all is an error."""
    skipped: list[Skipped] = []
    studies = list(iter_unlabelled(data_dir, skipped, limit))
    if not studies:
        raise ConfigError(f"no readable studies in {data_dir} ({len(skipped)} files or studies skipped)")
    return studies, skipped
