"""Fixtures for the model tests: tiny labelled cases written as NIfTI case folders, a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_export.data import SAGITTAL_DIRECTION as SAGITTAL_ITK_DIRECTION

torch = pytest.importorskip("torch")

SAGITTAL_DIRECTION = tuple(float(v) for v in SAGITTAL_ITK_DIRECTION.ravel())
"""Columns toward posterior, rows toward inferior, slices toward right: a sagittal DICOM series' axes."""


def stacked_spine(n_slices: int = 6, rows: int = 72, cols: int = 48, seed: int = 0) -> np.ndarray:
    """A label map with the 19 structures stacked caudal (bottom) to cranial (top) as bands."""
    from service.ontology import DEFAULT_ONTOLOGY

    rng = np.random.default_rng(seed)
    labels = np.zeros((n_slices, rows, cols), dtype=np.uint8)
    order = DEFAULT_ONTOLOGY.caudal_to_cranial()[:10]
    y = rows - 4
    for s in order:
        height = 3 if s.kind == "disc" else 4
        x0 = 12 + int(rng.integers(-2, 3))
        labels[1:-1, y - height:y, x0:x0 + 20] = s.label
        y -= height
    return labels


def write_volume_case(folder: Path, labels: np.ndarray, seed: int) -> Path:
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    discs = labels >= 11
    t2 = 30 + 60 * (labels > 0) + 90 * discs + rng.normal(0, 4, labels.shape)
    t1 = 30 + 80 * (labels > 0) - 30 * discs + rng.normal(0, 4, labels.shape)
    for name, array in (("t2", t2), ("t1", t1), ("labels", labels)):
        image = sitk.GetImageFromArray(array.astype(np.uint8 if name == "labels" else np.float32))
        image.SetSpacing((1.0, 1.0, 4.0))
        image.SetDirection(SAGITTAL_DIRECTION)
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
    return folder


@pytest.fixture(scope="session")
def tiny_cases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_cases")
    for i in range(3):
        write_volume_case(root / f"case{i}", stacked_spine(seed=i), seed=i)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_cases, tmp_path_factory) -> Path:
    """A text-guided model trained for the tiny config's few steps (a tiny random BERT as text encoder)."""
    from model_export.configs import get_config
    from model_export.training.loop import train

    out = tmp_path_factory.mktemp("tiny_run")
    return train(tiny_cases, get_config("tiny"), out, progress=False)


@pytest.fixture(scope="session")
def tiny_generated_study(tmp_path_factory) -> Path:
    """One small generated study (procedural spine, sagittal T1 and T2)."""
    from model_export.demo_model import generate_studies

    root = tmp_path_factory.mktemp("generated")
    generate_studies(root, 1, 4242, None, small=True)
    return root / "study_4242"


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_checkpoint, tiny_generated_study, tmp_path_factory) -> Path:
    from model_export.data import read_generated_study
    from model_export.export import export_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    export_model(tiny_checkpoint, out, parity_study=read_generated_study(tiny_generated_study))
    return out
