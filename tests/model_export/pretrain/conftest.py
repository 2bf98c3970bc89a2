"""Fixtures for the pretraining tests: small generated studies, an archive-like folder, tiny checkpoints."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def report_studies(tmp_path_factory) -> Path:
    """Three small generated studies (sagittal T1 and T2, labels, truth.json, report.txt)."""
    from model_export.demo_model import generate_studies

    return generate_studies(tmp_path_factory.mktemp("report_studies"), 3, 3100, None, small=True)


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> Path:
    """What an archive export holds: a full study (3-plane localizer, sagittal T1 and T2, axial T2) with its
    T2 series JPEG-LS compressed by dcmtk, tags removed, a corrupt file and a stray text file; a NIfTI
    volume with its label map beside it."""
    import pydicom
    import SimpleITK as sitk

    from model_export.synth import SynthConfig, generate_study
    from model_export.synth.config import SMALL_TEST_CONFIG

    root = tmp_path_factory.mktemp("archive")
    generated = tmp_path_factory.mktemp("archive_src") / "study"
    generate_study(generated, 3200, SynthConfig(use_spider=False, **SMALL_TEST_CONFIG))
    study = root / "export" / "patient_a"
    shutil.copytree(generated / "dicom", study)
    dcmcjpls = shutil.which("dcmcjpls")
    if dcmcjpls is not None:  # the tests that need compression check for it themselves
        for path in sorted((study / "sag_t2").iterdir()):
            subprocess.run([dcmcjpls, str(path), str(path)], check=True, capture_output=True)
    for path in sorted((study / "sag_t1").iterdir()):
        ds = pydicom.dcmread(path)
        for keyword in ("SeriesDescription", "InstanceNumber", "StudyDescription", "ImageType"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path)
    first = sorted((study / "sag_t1").iterdir())[0].read_bytes()
    (study / "sag_t1" / "IM_9999.dcm").write_bytes(first[: len(first) // 2])  # truncated pixel data
    (study / "notes.txt").write_text("not an image\n")
    (study / "README").write_bytes(b"\x00\x01 no DICOM preamble")
    volume_dir = root / "nifti_case"
    volume_dir.mkdir()
    volume = sitk.GetImageFromArray(np.random.default_rng(0).random((6, 40, 32)).astype(np.float32) * 100)
    volume.SetSpacing((1.0, 1.0, 4.0))
    volume.SetDirection((0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    sitk.WriteImage(volume, str(volume_dir / "t2.nii.gz"))
    sitk.WriteImage(sitk.Cast(volume > 50, sitk.sitkUInt8), str(volume_dir / "labels.nii.gz"))
    sitk.WriteImage(sitk.Cast(volume > 50, sitk.sitkUInt8) * 7, str(root / "spider_like_mask.mha"))
    return root


@pytest.fixture(scope="session")
def tiny_image_checkpoint(report_studies, tmp_path_factory) -> Path:
    from model_export.pretrain.image_loop import ImagePretrainConfig, pretrain_image

    cfg = ImagePretrainConfig(encoder="pico-mini", input_size=64, steps=3, batch_size=2, warmup_steps=1,
                              preview_every=3, checkpoint_every=2)
    return pretrain_image(report_studies, cfg, tmp_path_factory.mktemp("fcmae_run"), progress=False)


@pytest.fixture(scope="session")
def tiny_text_checkpoint(report_studies, tiny_image_checkpoint, tmp_path_factory) -> Path:
    from model_export.configs import TINY_TEXT_MODEL
    from model_export.pretrain.text_loop import TextPretrainConfig, pretrain_text

    cfg = TextPretrainConfig(objective="clip", text_model=TINY_TEXT_MODEL, embed_dim=32, encoder="pico-mini",
                             input_size=64, steps=3, batch_size=3, slices_per_study=2, max_length=64)
    return pretrain_text(report_studies, cfg, tmp_path_factory.mktemp("clip_run"),
                         init_image=tiny_image_checkpoint, progress=False)
