"""A small exported model that finds something, studies written as DICOM into a spool, settings per test.

The model directories are committed (tests/fixtures/models, built by tests/fixtures/build_models.py with
the real training and export code): a tiny text-guided model trained a few steps on large, high-contrast
spine bands, so the exported graphs segment something real and the worker's whole path - SEG, SR,
delivery - runs on the output of ONNX Runtime, not on anything hand-made, and without torch.
"""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from service.config import Destination, Settings
from service.queue.jobs import Job, make_job_id
from service.queue.state import StudyState, StudyStore
from service.queue.stream import JobQueue
from service.receive.spool import Spool
from tests.service.encode.dicom_factory import Geometry, write_series
from tests.service.encode.label_factory import CANONICAL, spine

STUDY_SHAPE = (5, 64, 64)
FIXTURE_MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "models"
TINY_BANDS_MODEL = FIXTURE_MODELS / "tiny-bands"
TINY_LEVELS_MODEL = FIXTURE_MODELS / "tiny-levels"
SAGITTAL_DIRECTION = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def spine_labels(seed: int, shape: tuple[int, int, int] = STUDY_SHAPE) -> np.ndarray:
    """Sacrum to L4 as large bands (the model learns these in a few steps), shifted a little per seed."""
    shift = int(np.random.default_rng(seed).integers(-3, 4))
    cols = slice(shape[2] // 4 + shift, shape[2] // 4 + shift + shape[2] // 2)
    return spine(CANONICAL[:5], shape, slices=slice(1, shape[0] - 1), cols=cols)


def spine_images(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """T2 (discs bright) and T1 (discs dark) intensities with noise, as uint16-ready float arrays."""
    rng = np.random.default_rng(seed)
    discs = labels >= 11
    t2 = 300 + 600 * (labels > 0) + 900 * discs + rng.normal(0, 40, labels.shape)
    t1 = 300 + 800 * (labels > 0) - 300 * discs + rng.normal(0, 40, labels.shape)
    return np.clip(t2, 0, 4000).astype(np.float32), np.clip(t1, 0, 4000).astype(np.float32)


@pytest.fixture(scope="session")
def worker_model_dir() -> Path:
    """The tiny text-guided model trained on spine bands, as committed (tests/fixtures/build_models.py)."""
    return TINY_BANDS_MODEL


@pytest.fixture(scope="session")
def worker_level_model_dir() -> Path:
    """The same model with a level classifier and an outline refiner, as committed."""
    return TINY_LEVELS_MODEL


@pytest.fixture(scope="session")
def onnx_model(worker_model_dir):
    from service.infer.model import OnnxModel

    return OnnxModel.load(worker_model_dir, intra_op_threads=1)


@dataclass
class SpooledStudy:
    study_uid: str
    t2_series_uid: str | None
    t1_series_uid: str | None
    sizes: list[tuple[str, int]]


def write_study(
    folder: Path,
    seed: int = 0,
    shape: tuple[int, int, int] = STUDY_SHAPE,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    with_t1: bool = True,
    with_t2: bool = True,
    upsample: int = 1,
) -> dict[str, list[Path]]:
    """A sagittal T2 and T1 study on one frame of reference, as DICOM files (series -> paths).

    upsample > 1 makes each pixel upsample x upsample smaller pixels: the same anatomy on a finer matrix.
    """
    labels = spine_labels(seed, shape)
    if upsample > 1:
        labels = np.repeat(np.repeat(labels, upsample, axis=1), upsample, axis=2)
    t2, t1 = spine_images(labels, seed)
    study_uid = pydicom.uid.generate_uid(
        entropy_srcs=[f"worker-study-{seed}-{transfer_syntax}-{shape}-{upsample}"]
    )
    frame_uid = pydicom.uid.generate_uid(entropy_srcs=[study_uid, "frame"])
    geometry = Geometry(pixel_spacing=(1.0 / upsample, 1.0 / upsample), slice_spacing=4.0)
    out: dict[str, list[Path]] = {}
    common = dict(study_uid=study_uid, frame_uid=frame_uid, transfer_syntax=transfer_syntax, seed=seed)
    if with_t2:
        out["t2"] = write_series(
            folder / "t2",
            t2.astype(np.uint16),
            geometry,
            series_uid=pydicom.uid.generate_uid(entropy_srcs=[study_uid, "t2"]),
            description="T2 SAG FSE",
            series_number=2,
            repetition_time=3500.0,
            echo_time=100.0,
            instance_order="shuffled",
            **common,
        )
    if with_t1:
        out["t1"] = write_series(
            folder / "t1",
            t1.astype(np.uint16),
            geometry,
            series_uid=pydicom.uid.generate_uid(entropy_srcs=[study_uid, "t1"]),
            description="T1 SAG TSE",
            series_number=3,
            repetition_time=550.0,
            echo_time=12.0,
            **common,
        )
    return out


def spool_files(spool_dir: Path, series: dict[str, list[Path]]) -> SpooledStudy:
    """Place files in the spool layout <study>/<series>/<sop>.dcm (the contract between listener and worker)."""
    spool = Spool(spool_dir, fsync=False)
    uids: dict[str, str] = {}
    sizes = []
    study_uid = ""
    for role, paths in series.items():
        for path in paths:
            data = path.read_bytes()
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            study_uid, series_uid, sop_uid = (
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                str(ds.SOPInstanceUID),
            )
            target = spool.instance_path(study_uid, series_uid, sop_uid)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            uids[role] = series_uid
            sizes.append((sop_uid, len(data)))
    return SpooledStudy(study_uid, uids.get("t2"), uids.get("t1"), sizes)


def enqueue(
    settings: Settings, study: SpooledStudy, redis_client, t2: str | None = "auto", t1: str | None = "auto"
) -> Job:
    job = Job(
        job_id=make_job_id(study.study_uid, study.sizes),
        study_uid=study.study_uid,
        t2_series_uid=study.t2_series_uid if t2 == "auto" else t2,
        t1_series_uid=study.t1_series_uid if t1 == "auto" else t1,
    )
    store = StudyStore(redis_client, settings.stream_prefix)
    store.ensure(study.study_uid)
    store.transition(study.study_uid, StudyState.QUEUED, job_id=job.job_id)
    assert JobQueue(redis_client, settings).enqueue(job)
    return job


def make_settings(
    redis_url: str, data_dir: Path, model_dir: Path, pacs_port: int | None = None, **overrides
) -> Settings:
    values = dict(
        redis_url=redis_url,
        data_dir=data_dir,
        stream_prefix=f"wt-{uuid.uuid4().hex[:8]}",
        model_dir=model_dir,
        intra_op_threads=1,
        destinations=[Destination(ae_title="PACS", host="127.0.0.1", port=pacs_port)] if pacs_port else [],
        deliver_backoff_s=0.2,
        deliver_backoff_cap_s=0.5,
        deliver_timeout_s=5.0,
        worker_heartbeat_s=0.5,
        fsync=False,
    )
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as LUMBAR_AI_* environment variables, for a worker subprocess."""

    env = {}
    for name in (
        "redis_url",
        "data_dir",
        "stream_prefix",
        "model_dir",
        "intra_op_threads",
        "deliver_backoff_s",
        "deliver_backoff_cap_s",
        "deliver_timeout_s",
        "worker_heartbeat_s",
        "visibility_timeout_s",
        "max_attempts",
        "fsync",
        "ae_title",
        "listen_port",
        "quiet_period_s",
        "require_called_aet",
    ):
        value = getattr(settings, name)
        env[f"LUMBAR_AI_{name.upper()}"] = json.dumps(value) if isinstance(value, bool) else str(value)
    env["LUMBAR_AI_DESTINATIONS"] = json.dumps([d.model_dump() for d in settings.destinations])
    env["LUMBAR_AI_ENV_FILE"] = "/nonexistent"
    return env
