"""Real scans with partial labels: case folders described by a ``case.json``, and the fixed validation split.

A case folder holds one image (``t2.*``, ``t1.*``, or ``image.*`` for a sequence that is neither, such as
a water-fat gradient echo), ``labels.*`` on the same grid, and ``case.json``::

    {"voxel_mm": [1, 1, 3], "sequence": "...", "structures": "...", "levels": "...",
     "label_values": [2, 3, 4, 5, 6]}

``label_values`` are the values the labels use. Values 1-19 are the ontology's structures, labelled for
that structure only where the source draws it: a "vertebra" label covers the vertebral body, never the
posterior elements, so everything unlabelled is *unknown*, not background. Values from ``RANK_BASE + 1``
count vertebral bodies from the bottom where the source does not know their levels: such a case teaches
where bodies are and that their names form one consecutive run, nothing more.

An ``image.*`` joins as the T2 channel: the water-fat images at hand show T2-like contrast (bright CSF
and nuclei), and the service feeds a study's only sagittal series there too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model_export.data import Case, _find_volume, read_oriented
from service.errors import ConfigError
from service.ontology import DEFAULT_ONTOLOGY, Ontology

RANK_BASE = 100
"""Labels RANK_BASE + 1, + 2, ... are vertebral bodies of unknown level, counted from the bottom."""
SOFT_TISSUE_MARGIN_MM = 20.0
"""Nothing of the ontology lies farther than this in front of the vertebral bodies and discs at their height:
such voxels are background in training and "labels on soft tissue" in evaluation."""
SPLIT_FILE = Path(__file__).with_name("real_split.json")
"""The fixed validation split of the real labelled cases (case names such as ``vb3/case02``)."""


REAL_SOURCES = {
    "vb3": "MyoSegmenTUM spine (Burian et al., BMC Musculoskelet Disord 2019): water-fat gradient echo, 3 T, "
           "healthy; vertebral bodies L1-L5",
    "vb2": "Chu et al., PLoS ONE 2015: T2 TSE, 1.5 T, healthy; vertebral bodies T11-L5",
    "vb1": "Zukic et al., Comput Graph Forum 2014: routine T1/T2 of patients; vertebral bodies, levels unknown",
    "ivd": "Menezes-Reis et al., Quant Imaging Med Surg 2016: T2 FSE, 1.5 T; lumbar discs (validation only)",
}
"""The real labelled sets by folder, as their README describes them; all redistributed by the FastCleverSeg
repository (Ramos et al., Magn Reson Imaging 2024) under GPL-3.0."""
REAL_LICENCE = "GPL-3.0 (FastCleverSeg repository redistribution; cite the original papers)"


def data_sources(provenance: dict) -> list[dict]:
    """The model card's ``data_sources``: every set that trained or validated the model, with its licence
    and the cases it gave, from a checkpoint's provenance (its ``real_validation_cases``, or the committed
    split for a checkpoint that does not record them)."""
    sources = [{"name": "generated studies (model_export.synth)", "licence": "Apache-2.0 (this project)",
                "label_maps": "SPIDER masks (van der Graaf et al., Sci Data 2024), CC BY 4.0, and procedural spines",
                "training_cases": len(provenance.get("training_cases", [])),
                "validation_cases": provenance.get("validation_cases", [])}]
    real = provenance.get("real_training_cases") or []
    if real:
        validation = provenance.get("real_validation_cases") or read_split()["validation"]
        for folder, description in REAL_SOURCES.items():
            sources.append({"name": f"real labelled scans {folder}/", "description": description,
                            "licence": REAL_LICENCE,
                            "training_cases": [c for c in real if c.startswith(folder + "/")],
                            "validation_cases": [c for c in validation if c.startswith(folder + "/")]})
    return sources


def is_real_case(folder: Path) -> bool:
    return (Path(folder) / "case.json").is_file() and _find_volume(Path(folder), "labels") is not None


def read_real_case(case_dir: Path, name: str | None = None, ontology: Ontology = DEFAULT_ONTOLOGY) -> Case:
    """A ``case.json`` folder as a partial-label :class:`Case` (``partial=True``)."""
    import SimpleITK as sitk

    case_dir = Path(case_dir)
    try:
        meta = json.loads((case_dir / "case.json").read_text())
        values = [int(v) for v in meta["label_values"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{case_dir / 'case.json'}: needs a list \"label_values\" of integers ({exc})") from exc
    known = {s.label for s in ontology.structures}
    ranks = [v for v in values if v > RANK_BASE]
    wrong = [v for v in values if v not in known and v <= RANK_BASE]
    if wrong or (ranks and len(ranks) != len(values)):
        raise ConfigError(f"{case_dir / 'case.json'}: label_values {values} mix or leave the ontology's values "
                          f"and unknown-level ranks ({RANK_BASE + 1}, {RANK_BASE + 2}, ...)")
    paths = {key: _find_volume(case_dir, key) for key in ("t2", "t1", "image", "labels")}
    image_path = paths["t2"] or paths["image"] or paths["t1"]
    if image_path is None or paths["labels"] is None:
        raise ConfigError(f"{case_dir} needs labels.* and one of t2.*, t1.*, image.*")
    image = read_oriented(image_path)
    labels_img = sitk.Resample(read_oriented(paths["labels"]), image, sitk.Transform(),
                               sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    pixels = sitk.GetArrayFromImage(image).astype(np.float32)
    labels = sitk.GetArrayFromImage(labels_img).astype(np.uint8)
    stray = sorted(set(np.unique(labels).tolist()) - set(values) - {0})
    if stray:
        raise ConfigError(f"{case_dir}: labels hold values {stray} that case.json does not list")
    spacing = image.GetSpacing()
    as_t1 = image_path == paths["t1"]
    return Case(name=name or case_dir.name, t2=None if as_t1 else pixels, t1=pixels if as_t1 else None,
                labels=labels, labelled=frozenset(values), pixel_spacing=(spacing[1], spacing[0]),
                slice_spacing=spacing[2], direction=np.array(image.GetDirection()).reshape(3, 3),
                partial=True, level_known=not ranks)


def _real_case_folders(root: Path) -> list[Path]:
    """``root`` itself when it is a case folder, else its children and grandchildren that are, sorted."""
    if is_real_case(root):
        return [root]
    return sorted(p for p in [*root.glob("*"), *root.glob("*/*")] if p.is_dir() and is_real_case(p))


def holds_real_cases(root: Path) -> bool:
    """Whether ``root`` is a real case folder or holds some among its children or grandchildren."""
    return bool(_real_case_folders(Path(root)))


def discover_real_cases(root: Path, ontology: Ontology = DEFAULT_ONTOLOGY
                        ) -> list[tuple[str, Callable[[], Case]]]:
    """(name, loader) for each case folder under ``root`` (the folder itself, its children, or grandchildren
    such as ``vb3/case02``), named by its path below ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"real case folder {root} does not exist")
    folders = _real_case_folders(root)
    if not folders:
        raise ConfigError(f"no real case folders (case.json with labels.*) under {root}")
    out = []
    for folder in folders:
        name = folder.name if folder == root else folder.relative_to(root).as_posix()
        out.append((name, lambda d=folder, n=name: read_real_case(d, n, ontology)))
    return out


def read_split(path: Path = SPLIT_FILE) -> dict[str, list[str]]:
    """{"validation": [case names]}: the cases that check a model and are never trained on."""
    try:
        split = json.loads(Path(path).read_text())
        return {"validation": [str(v) for v in split["validation"]]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: a split file holds {{\"validation\": [case names]}} ({exc})") from exc


def split_real_cases(found: list[tuple[str, Callable[[], Case]]], split_path: Path = SPLIT_FILE,
                     subset: str = "training") -> list[tuple[str, Callable[[], Case]]]:
    """The ``training`` cases (all but the validation split), the ``validation`` cases, or ``all``."""
    if subset == "all":
        return found
    validation = set(read_split(split_path)["validation"])
    if subset == "validation":
        return [item for item in found if item[0] in validation]
    if subset == "training":
        return [item for item in found if item[0] not in validation]
    raise ConfigError(f"unknown subset {subset!r}: training, validation or all")


def anterior_background(labels: np.ndarray, pixel_spacing: tuple[float, float],
                        margin_mm: float = SOFT_TISSUE_MARGIN_MM) -> np.ndarray:
    """Voxels more than ``margin_mm`` in front of the labelled structures at their height (bool, like labels).

    Per slice, the front edge of the labels is taken row by row (columns run toward posterior) and
    interpolated across the rows between labelled ones (the unlabelled discs between labelled bodies); rows
    above and below the labels, and slices without labels, claim nothing.
    """
    out = np.zeros(labels.shape, dtype=bool)
    margin_px = margin_mm / float(pixel_spacing[1])
    cols = np.arange(labels.shape[2])
    for k in range(labels.shape[0]):
        has = labels[k] > 0
        rows = np.flatnonzero(has.any(axis=1))
        if rows.size == 0:
            continue
        front = np.array([np.flatnonzero(has[r])[0] for r in rows], dtype=float)
        span = np.arange(rows[0], rows[-1] + 1)
        edge = np.interp(span, rows, front)
        out[k, span] = cols[None, :] < (edge - margin_px)[:, None]
    return out


def certain_background(labels: np.ndarray, pixel_spacing: tuple[float, float],
                       margin_mm: float = SOFT_TISSUE_MARGIN_MM) -> np.ndarray:
    """Where a partial case's unlabelled voxels are background for certain in training (bool, like labels).

    :func:`anterior_background`, and on every slice with labels also the rows above and below them, in front
    of the front edge of the nearest labelled row by ``margin_mm``. Below the lowest labelled body lie the
    sacrum and coccyx, which curve backward, and in front of them the pelvic organs; above the highest, the
    vertebrae continue in line. Without this the pelvic tissue under the labels is unknown, and a model is
    free to spread the sacrum over it. The evaluation's soft-tissue count keeps to the labels' rows.
    """
    out = anterior_background(labels, pixel_spacing, margin_mm)
    margin_px = margin_mm / float(pixel_spacing[1])
    cols = np.arange(labels.shape[2])
    for k in range(labels.shape[0]):
        has = labels[k] > 0
        rows = np.flatnonzero(has.any(axis=1))
        if rows.size == 0:
            continue
        top, bottom = np.flatnonzero(has[rows[0]])[0], np.flatnonzero(has[rows[-1]])[0]
        out[k, :rows[0]] = cols[None, :] < top - margin_px
        out[k, rows[-1] + 1:] = cols[None, :] < bottom - margin_px
    return out
