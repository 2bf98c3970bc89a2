"""Abnormalities are label-map edits at the requested level, and the report names exactly them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from model_export.synth.anatomy import paint_spine
from model_export.synth.canvas import VolumeCanvas
from model_export.synth.findings import FindingSpec, paint_findings
from model_export.synth.spine import SpineModel, procedural_spine
from model_export.synth.tissues import Tissue
from service.ontology import DEFAULT_ONTOLOGY

DETAILS = {
    "disc_bulging": {"extent_mm": 3.5},
    "disc_protrusion": {"depth_mm": 5.0, "position": "central", "side": 0.0},
    "disc_extrusion": {"depth_mm": 7.0, "position": "left paracentral", "side": 1.0, "migration": "caudal",
                       "migration_mm": 10.0},
    "schmorl_node": {"endplate": "cranial", "depth_mm": 5.0, "offset_mm": 2.0},
    "vertebral_degeneration": {"modic_type": 1, "endplate": "both", "band_mm": 6.0, "osteophytes": True},
}


def _canvas(spine: SpineModel) -> VolumeCanvas:
    """A 1 mm grid around the lumbar spine."""
    lo, hi = spine.point(-60), spine.point(spine.segment("T11").s1 + 40)
    z = np.arange(lo[2] - 10, hi[2] + 10, 1.0)
    y = np.arange(min(lo[1], hi[1]) - 70, max(lo[1], hi[1]) + 90, 1.0)
    x = np.arange(-40, 41, 1.0, dtype=np.float32)
    zz, yy = np.meshgrid(z, y, indexing="ij")
    s2d, t2d = spine.st_of(yy, zz)
    return VolumeCanvas(s2d, t2d, x, y, z, (1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def healthy() -> tuple[SpineModel, VolumeCanvas]:
    spine = procedural_spine(np.random.default_rng(4), 0.0)
    canvas = _canvas(spine)
    paint_spine(canvas, spine, set())
    return spine, canvas


def _label(level: str, kind: str) -> int:
    return DEFAULT_ONTOLOGY.by_level(level, kind).label  # type: ignore[arg-type]


@pytest.mark.parametrize("finding,level", [
    ("disc_bulging", "L4/L5"), ("disc_protrusion", "L5/S1"), ("disc_extrusion", "L3/L4"),
    ("schmorl_node", "L2/L3"), ("vertebral_degeneration", "L4"),
])
def test_each_abnormality_edit_sits_at_its_requested_level(healthy: tuple[SpineModel, VolumeCanvas], finding: str,
                                                           level: str) -> None:
    spine, base = healthy
    canvas = _canvas(spine)
    canvas.tissue[:], canvas.label[:] = base.tissue, base.label
    paint_findings(canvas, spine, [FindingSpec(finding, level, dict(DETAILS[finding]))])
    changed = (canvas.tissue != base.tissue) | (canvas.label != base.label)
    assert changed.sum() > 20, "the edit must be visible"
    new_labels = set(np.unique(canvas.label[changed]).tolist())
    kind = "disc" if "/" in level else "vertebra"
    own = _label(level, kind)
    if kind == "disc":
        below, above = spine.neighbours(spine.segment(level))
        allowed = {own} | {g.label for g in (below, above) if g is not None}  # Schmorl rim stays vertebra
        assert own in new_labels and new_labels <= allowed
        old = set(np.unique(base.label[changed]).tolist())
        assert old <= {0} | allowed, "an edit may only take space from background or its neighbours"
    else:
        assert new_labels == {own}
        modic = (canvas.tissue == Tissue.MODIC1) & (canvas.label == own)
        assert modic.sum() > 50
    # everything the edit touched lies within the level's span along the spine (plus migration)
    seg = spine.segment(level)
    s = np.broadcast_to(canvas.s2d[:, :, None], canvas.tissue.shape)[changed]
    margin = 6.0 + DETAILS[finding].get("migration_mm", 0.0) + DETAILS[finding].get("depth_mm", 0.0)
    assert s.min() > seg.s0 - margin and s.max() < seg.s1 + margin
    # the structure stays one connected piece
    _, n = ndimage.label(canvas.label == own, structure=np.ones((3, 3, 3)))
    assert n == 1


def test_extrusion_extends_beyond_its_base_in_the_migration_direction(healthy: tuple[SpineModel, VolumeCanvas]
                                                                      ) -> None:
    spine, base = healthy
    canvas = _canvas(spine)
    canvas.tissue[:], canvas.label[:] = base.tissue, base.label
    paint_findings(canvas, spine, [FindingSpec("disc_extrusion", "L3/L4", dict(DETAILS["disc_extrusion"]))])
    hernia = canvas.tissue == Tissue.HERNIA
    s = np.broadcast_to(canvas.s2d[:, :, None], hernia.shape)[hernia]
    seg = spine.segment("L3/L4")
    assert s.min() < seg.s0 - 5  # caudal migration behind the vertebra below
    assert np.ptp(s) > seg.height  # extent exceeds the base


def test_healthy_procedural_anatomy_is_one_piece_per_structure(healthy: tuple[SpineModel, VolumeCanvas]) -> None:
    spine, canvas = healthy
    inside = [g.label for g in spine.segments if g.label and g.s1 < spine.segment("T11").s0]
    assert len(inside) == 13  # sacrum, L5..T12 and the discs L5/S1..T12/L1
    for value in inside:
        _, n = ndimage.label(canvas.label == value, structure=np.ones((3, 3, 3)))
        assert n == 1, f"label {value}: {n} pieces"


def _impression_pairs(report: str) -> set[tuple[str, str]]:
    impression = report.split("IMPRESSION:")[1]
    return set(re.findall(r"([A-Za-z' ]+?) at ([LTS]\d+(?:/[LTS]\d+)?)", impression))


def test_report_names_exactly_the_injected_findings(procedural_study: Path) -> None:
    truth = json.loads((procedural_study / "truth.json").read_text())
    report = (procedural_study / "report.txt").read_text()
    injected = {(DEFAULT_ONTOLOGY.finding(f["finding"]).name, f["level"]) for f in truth["findings"]}
    assert injected and {(n.strip(), lv) for n, lv in _impression_pairs(report)} == injected
    body = report.split("FINDINGS:")[1].split("IMPRESSION:")[0]
    for name, level in injected:
        assert re.search(rf"^{re.escape(level)}: .*{re.escape(name)}", body, re.MULTILINE), (name, level)


def test_report_of_a_normal_study_says_normal(tmp_path: Path) -> None:
    from dataclasses import replace

    from model_export.synth import generate_study

    from .conftest import SMALL

    truth = generate_study(tmp_path / "normal", 5, replace(SMALL, normal_fraction=1.0, include_axial=False,
                                                           include_localizer=False))
    assert truth.findings == [] and not any(v for f in truth.levels.values() for v in f.values())
    report = (tmp_path / "normal" / "report.txt").read_text()
    assert "Normal study" in report
    names = [f.name for f in DEFAULT_ONTOLOGY.findings]
    assert not any(n in report.split("IMPRESSION:")[1] for n in names)


@pytest.mark.parametrize("seed", [1, 2])
def test_edits_on_real_spider_anatomy_stay_attached_and_visible(shared_data: Path, seed: int) -> None:
    from dataclasses import replace

    from model_export.synth import SynthConfig
    from model_export.synth.config import SMALL_TEST_CONFIG
    from model_export.synth.study import healthy_canvas, plan_case

    config = replace(SynthConfig(use_spider=True, spider_dir=shared_data / "spider_masks", **SMALL_TEST_CONFIG),
                     finding_prevalence=1.0, normal_fraction=0.0)
    plan = plan_case(seed, config)
    assert plan.spine.source.startswith("spider:") and plan.findings
    canvas = healthy_canvas(plan, config)
    for f in plan.findings:
        before = canvas.tissue.copy()
        own = plan.spine.segment(f.level).label
        _, n_before = ndimage.label(canvas.label == own, structure=np.ones((3, 3, 3)))
        paint_findings(canvas, plan.spine, [f])
        assert (canvas.tissue != before).sum() >= 10, f"{f.finding} at {f.level} left no trace"
        _, n = ndimage.label(canvas.label == own, structure=np.ones((3, 3, 3)))
        assert n <= n_before, f"{f.finding} at {f.level}: {n_before} -> {n} pieces"  # a real mask may start split
