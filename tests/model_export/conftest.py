"""Fixtures shared by the model_export tests: real labelled case folders as the real sets lay them out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model_export.data import SAGITTAL_DIRECTION


def _write_real_case(folder: Path, labels: np.ndarray, image_name: str = "t2", values: list[int] | None = None,
                    spacing: tuple[float, float, float] = (1.0, 1.0, 3.0)) -> Path:
    """A case folder as the real labelled sets lay it out: <image>.nii.gz, labels.nii.gz, case.json."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    image = 40.0 + 100.0 * (labels > 0) + np.random.default_rng(0).normal(0, 3, labels.shape)
    for name, array in ((image_name, image.astype(np.float32)), ("labels", labels.astype(np.uint8))):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing(spacing)
        volume.SetDirection(tuple(float(v) for v in SAGITTAL_DIRECTION.ravel()))
        sitk.WriteImage(volume, str(folder / f"{name}.nii.gz"))
    present = sorted(int(v) for v in np.unique(labels) if v)
    (folder / "case.json").write_text(json.dumps({"voxel_mm": list(spacing), "label_values": values or present}))
    return folder


def _bodies(values: list[int], shape=(4, 60, 40)) -> np.ndarray:
    """Vertebral bodies as blocks stacked bottom (first value) to top, with a gap for each disc."""
    labels = np.zeros(shape, dtype=np.uint8)
    for i, value in enumerate(values):
        bottom = shape[1] - 4 - 9 * i
        labels[1:3, bottom - 6:bottom, 10:22] = value
    return labels




@pytest.fixture
def write_real_case():
    """write_real_case(folder, labels, image_name="t2", values=None, spacing=(1, 1, 3)) -> folder."""
    return _write_real_case


@pytest.fixture
def bodies():
    """bodies(values, shape=(4, 60, 40)) -> labels with one block per value, bottom first."""
    return _bodies
