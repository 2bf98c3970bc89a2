"""Dataset readers: generated studies, SPIDER-layout folders, and NIfTI/MHA/DICOM folders with label maps.

Every reader returns a :class:`Case` on the sagittal grid of its reference series (T2 when present):
arrays (n_slices, rows, cols), T1 resampled onto that grid, labels in the ontology's numbering. Generated
studies are read through the service's own DICOM loader (``service.infer.series``), so training sees the
pixels and geometry the worker will see. Volumes from NIfTI or MHA files are reoriented to the axes of a
typical sagittal DICOM series: columns toward posterior, rows toward inferior, slices toward right.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.errors import ConfigError
from service.ontology import DEFAULT_ONTOLOGY, Ontology

SAGITTAL_ORIENTATION = "PIR"
SAGITTAL_DIRECTION = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
"""ITK direction of SAGITTAL_ORIENTATION in LPS: columns toward posterior, rows toward inferior, slices
toward the patient's right."""
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


@dataclass
class Case:
    name: str
    t2: np.ndarray | None
    t1: np.ndarray | None
    labels: np.ndarray
    """uint8 (n, rows, cols) on the reference grid, ontology label values."""
    labelled: frozenset[int]
    """Structure labels this source annotates; the others are merged into background in the loss."""
    findings: dict[int, dict[str, bool]] = field(default_factory=dict)
    """structure label -> {finding key: present}; only what the source states."""
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    slice_spacing: float = 1.0
    direction: np.ndarray = field(default_factory=lambda: SAGITTAL_DIRECTION.copy())
    """3x3, ITK's convention: columns are the patient directions of increasing column, row, slice index."""
    partial: bool = False
    """An unlabelled voxel is unknown, not background (real scans labelled for some structures only; see
    model_export.real_cases). False: every voxel outside the labels is background or an unlabelled class."""
    level_known: bool = True
    """False: labels count vertebral bodies from the bottom (real_cases.RANK_BASE + 1, ...), levels unknown."""

    @property
    def reference(self) -> np.ndarray:
        return self.t2 if self.t2 is not None else self.t1  # type: ignore[return-value]

    def grid(self):  # -> service.infer.series.SeriesVolume
        """The reference grid's geometry, as the service's post-processing reads it (origin at 0)."""
        return sagittal_grid(self.labels, self.pixel_spacing, self.slice_spacing, self.direction)


def sagittal_grid(array: np.ndarray, pixel_spacing: tuple[float, float], slice_spacing: float,
                  direction: np.ndarray):  # -> service.infer.series.SeriesVolume
    """A geometry-only volume (origin at 0, no DICOM datasets) for code that takes a series grid."""
    from service.infer.series import SeriesVolume

    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    return SeriesVolume(pixels=array, datasets=[], origin=np.zeros(3), row_dir=d[:, 0], col_dir=d[:, 1],
                        normal=d[:, 2], pixel_spacing=tuple(pixel_spacing), slice_spacing=float(slice_spacing))


# ---------------------------------------------------------------- generated studies

def read_generated_study(study_dir: Path, ontology: Ontology = DEFAULT_ONTOLOGY) -> Case:
    """A study written by ``lumbar-ai synth``: dicom/sag_t2, dicom/sag_t1, labels/sag_t2.nii.gz, truth.json."""
    import SimpleITK as sitk

    from service.infer.series import load_series, resample_onto

    study_dir = Path(study_dir)
    truth_path = study_dir / "truth.json"
    if not truth_path.is_file():
        raise ConfigError(f"{study_dir} is not a generated study (no truth.json)")
    truth = json.loads(truth_path.read_text())
    t2_files = sorted((study_dir / "dicom" / "sag_t2").glob("*.dcm"))
    t1_files = sorted((study_dir / "dicom" / "sag_t1").glob("*.dcm"))
    if not t2_files and not t1_files:
        raise ConfigError(f"{study_dir} has neither dicom/sag_t2 nor dicom/sag_t1")
    t2 = load_series(t2_files) if t2_files else None
    t1 = load_series(t1_files) if t1_files else None
    reference = t2 if t2 is not None else t1
    label_name = "sag_t2" if t2 is not None else "sag_t1"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(study_dir / "labels" / f"{label_name}.nii.gz")))
    if labels.shape != reference.shape:
        raise ConfigError(f"{study_dir}: label map {labels.shape} does not match series {reference.shape}")
    t1_on_ref = None
    if t1 is not None:
        t1_on_ref = t1.pixels if reference is t1 else resample_onto(t1, reference)
    return Case(
        name=study_dir.name,
        t2=None if t2 is None else t2.pixels.astype(np.float32),
        t1=None if t1_on_ref is None else t1_on_ref.astype(np.float32),
        labels=labels.astype(np.uint8),
        labelled=frozenset(s.label for s in ontology.structures),
        findings=findings_from_truth(truth.get("levels", {}), ontology),
        pixel_spacing=tuple(float(v) for v in reference.pixel_spacing),
        slice_spacing=float(reference.slice_spacing),
        direction=reference.direction,
    )


def findings_from_truth(levels: dict[str, dict[str, bool]], ontology: Ontology = DEFAULT_ONTOLOGY
                        ) -> dict[int, dict[str, bool]]:
    """truth.json "levels" ({"L4/L5": {...}, "L4": {...}}) keyed by structure label instead."""
    out: dict[int, dict[str, bool]] = {}
    for level, values in levels.items():
        kind = "disc" if "/" in level else "vertebra"
        try:
            structure = ontology.by_level(level, kind)
        except KeyError:
            continue
        keys = {f.key for f in ontology.findings_at(kind)}
        out[structure.label] = {k: bool(v) for k, v in values.items() if k in keys}
    return out


# ---------------------------------------------------------------- SPIDER layout

def spider_to_ontology(mask: np.ndarray, ontology: Ontology = DEFAULT_ONTOLOGY) -> np.ndarray:
    """SPIDER labels (vertebrae 1 = L5, 2 = L4, ...; discs 201 = L5/S1, ...; 100 = canal) to ours."""
    out = np.zeros(mask.shape, dtype=np.uint8)
    vertebrae = ontology.of_kind("vertebra")  # L5 first
    discs = ontology.of_kind("disc")  # L5/S1 first
    for i, s in enumerate(vertebrae):
        out[mask == i + 1] = s.label
    for i, s in enumerate(discs):
        out[mask == 201 + i] = s.label
    return out


def read_spider_case(root: Path, stem: str, ontology: Ontology = DEFAULT_ONTOLOGY) -> Case:
    """images/<stem>.mha with masks/<stem>.mha; the T1 of the same patient, when present, joins as channel 2.

    SPIDER does not label the sacrum, so the sacrum is left out of this source's loss.
    """
    import SimpleITK as sitk

    root = Path(root)
    image = read_oriented(root / "images" / f"{stem}.mha")
    mask = read_oriented(root / "masks" / f"{stem}.mha")
    patient = stem.split("_")[0]
    t1_path = root / "images" / f"{patient}_t1.mha"
    is_t1 = stem.endswith("_t1")
    t1 = None
    if not is_t1 and t1_path.is_file():
        t1_img = read_oriented(t1_path)
        t1 = sitk.GetArrayFromImage(sitk.Resample(t1_img, image, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                  sitk.sitkFloat32))
    pixels = sitk.GetArrayFromImage(image).astype(np.float32)
    labels = spider_to_ontology(sitk.GetArrayFromImage(mask), ontology)
    spacing = image.GetSpacing()
    return Case(name=stem, t2=None if is_t1 else pixels, t1=pixels if is_t1 else t1, labels=labels,
                labelled=frozenset(s.label for s in ontology.structures if s.kind != "sacrum"),
                pixel_spacing=(spacing[1], spacing[0]), slice_spacing=spacing[2],
                direction=np.array(image.GetDirection()).reshape(3, 3))


# ---------------------------------------------------------------- generic folders

def read_oriented(path: Path):
    """A volume file or a DICOM folder as a SimpleITK image in the sagittal DICOM axis order."""
    import SimpleITK as sitk

    path = Path(path)
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            files = reader.GetGDCMSeriesFileNames(str(path))
            if not files:
                raise ConfigError(f"{path} holds no DICOM series")
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ConfigError(f"cannot read image {path}: {exc}") from exc
    return sitk.DICOMOrient(image, SAGITTAL_ORIENTATION)


def _find_volume(case_dir: Path, name: str) -> Path | None:
    for suffix in VOLUME_SUFFIXES:
        if (case_dir / f"{name}{suffix}").is_file():
            return case_dir / f"{name}{suffix}"
    return case_dir / name if (case_dir / name).is_dir() else None


def read_volume_case(case_dir: Path, ontology: Ontology = DEFAULT_ONTOLOGY) -> Case:
    """<case>/t2.* and/or <case>/t1.* (NIfTI, MHA, NRRD file or DICOM folder) with <case>/labels.*.

    Labels use the ontology's values; an optional labelled.json lists the labels the source annotates, and an
    optional findings.json states findings per level as truth.json does (``{"levels": {"L4/L5":
    {"disc_protrusion": true, ...}, "L4": {"vertebral_degeneration": false}}}``): the finding losses and the
    level classifier learn from the levels and findings it states, and from nothing else.
    """
    import SimpleITK as sitk

    case_dir = Path(case_dir)
    t2_path, t1_path = _find_volume(case_dir, "t2"), _find_volume(case_dir, "t1")
    label_path = _find_volume(case_dir, "labels")
    if label_path is None or (t2_path is None and t1_path is None):
        raise ConfigError(f"{case_dir} needs labels.* and t2.* or t1.*")
    ref_img = read_oriented(t2_path or t1_path)
    labels_img = sitk.Resample(read_oriented(label_path), ref_img, sitk.Transform(), sitk.sitkNearestNeighbor,
                               0, sitk.sitkUInt8)
    t1 = None
    if t2_path is not None and t1_path is not None:
        t1 = sitk.GetArrayFromImage(sitk.Resample(read_oriented(t1_path), ref_img, sitk.Transform(),
                                                  sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    ref = sitk.GetArrayFromImage(ref_img).astype(np.float32)
    labelled = frozenset(s.label for s in ontology.structures)
    if (case_dir / "labelled.json").is_file():
        labelled = frozenset(int(v) for v in json.loads((case_dir / "labelled.json").read_text()))
    findings: dict[int, dict[str, bool]] = {}
    if (case_dir / "findings.json").is_file():
        try:
            findings = findings_from_truth(json.loads((case_dir / "findings.json").read_text())["levels"], ontology)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{case_dir / 'findings.json'} must hold {{\"levels\": {{level: {{finding: "
                              f"true|false}}}}}}: {exc}") from exc
    spacing = ref_img.GetSpacing()
    return Case(name=case_dir.name, t2=ref if t2_path else None, t1=t1 if t2_path else ref,
                labels=sitk.GetArrayFromImage(labels_img), labelled=labelled, findings=findings,
                pixel_spacing=(spacing[1], spacing[0]), slice_spacing=spacing[2],
                direction=np.array(ref_img.GetDirection()).reshape(3, 3))


# ---------------------------------------------------------------- discovery

def discover_cases(data_dir: Path, ontology: Ontology = DEFAULT_ONTOLOGY) -> list[tuple[str, Callable[[], Case]]]:
    """(name, loader) for every case under ``data_dir``, in a stable order; loaders read on call."""
    from model_export.real_cases import discover_real_cases, holds_real_cases

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ConfigError(f"data folder {data_dir} does not exist")
    if holds_real_cases(data_dir):
        return discover_real_cases(data_dir, ontology)
    if (data_dir / "truth.json").is_file():
        return [(data_dir.name, lambda d=data_dir: read_generated_study(d, ontology))]
    if (data_dir / "images").is_dir() and (data_dir / "masks").is_dir():
        stems = sorted(p.name[: -len(".mha")] for p in (data_dir / "masks").glob("*.mha")
                       if (data_dir / "images" / p.name).is_file())
        return [(s, lambda s=s: read_spider_case(data_dir, s, ontology)) for s in stems]
    out: list[tuple[str, Callable[[], Case]]] = []
    for sub in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        if (sub / "truth.json").is_file():
            out.append((sub.name, lambda d=sub: read_generated_study(d, ontology)))
        elif _find_volume(sub, "labels") is not None:
            out.append((sub.name, lambda d=sub: read_volume_case(d, ontology)))
    if not out:
        raise ConfigError(f"no cases found in {data_dir}: expected generated studies (truth.json), "
                          "a SPIDER layout (images/, masks/) or case folders with labels.*")
    return out


def load_cases(data_dir: Path, ontology: Ontology = DEFAULT_ONTOLOGY, limit: int | None = None) -> list[Case]:
    return [load() for _, load in discover_cases(data_dir, ontology)[:limit]]
