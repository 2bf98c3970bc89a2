"""A small real study (oblique sagittal T2 on disk) with a hand-made post-processed result."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.encode.identity import ResultContext
from service.infer.postprocess import SpineResult, postprocess
from service.infer.series import SeriesVolume, load_series
from service.ontology import DEFAULT_ONTOLOGY as ONT
from tests.conftest import require_tool
from tests.service.encode.dicom_factory import oblique, phantom, write_enhanced, write_series
from tests.service.encode.label_factory import CANONICAL, spine

SHAPE = (5, 200, 48)
CARD = {
    "name": "lumbar-test",
    "version": "0.0.1",
    "provenance": "trained on synthetic data only",
    "finding_thresholds": {"disc_bulging": 0.5, "disc_protrusion": 0.6, "vertebral_degeneration": 0.5},
}


def finding_probs() -> dict[int, dict[str, float]]:
    out = {}
    for label in CANONICAL:
        kind = ONT.by_label(label).kind
        if kind == "disc":
            out[label] = {
                "disc_bulging": 0.8,
                "disc_protrusion": 0.3,
                "disc_extrusion": 0.05,
                "schmorl_node": 0.1,
            }
        elif kind == "vertebra":
            out[label] = {"vertebral_degeneration": 0.2 if label % 2 else 0.7}
    return out


@dataclass
class Case:
    reference: SeriesVolume
    result: SpineResult
    context: ResultContext
    paths: list[Path]


def make_case(
    folder: Path, job_id: str = "1.2.826.0.1.3680043.10.1.1:feedbeef", enhanced: bool = False
) -> Case:
    labels = spine(CANONICAL, SHAPE)
    volume = phantom(SHAPE)
    if enhanced:
        paths = [write_enhanced(folder, volume, oblique(5.0), frame_order=[2, 0, 4, 1, 3])]
    else:
        paths = write_series(folder, volume, oblique(5.0), instance_order="shuffled")
    reference = load_series(paths)
    result = postprocess(labels, finding_probs(), ONT, CARD["finding_thresholds"], reference)
    return Case(reference, result, ResultContext.from_card(job_id, CARD, "lumbar-ai project"), paths)


@pytest.fixture
def case(tmp_path) -> Case:
    return make_case(tmp_path / "t2")


def dciodvfy_errors(path: Path) -> list[str]:
    exe = require_tool("dciodvfy")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
