"""Label maps: structures in anatomical order, each one connected piece, ontology labels only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from model_export.synth import SynthConfig, generate_study, synthesize_case
from model_export.synth.config import SMALL_TEST_CONFIG
from service.errors import SynthError
from service.ontology import DEFAULT_ONTOLOGY


def _order_along_spine(label_img: sitk.Image) -> list[int]:
    """Present labels sorted by the patient z (cranial) of their centroids."""
    arr = sitk.GetArrayFromImage(label_img)
    out = []
    for value in np.unique(arr):
        if value == 0:
            continue
        idx = np.argwhere(arr == value).mean(axis=0)[::-1]
        z = label_img.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx])[2]
        out.append((z, int(value)))
    return [v for _, v in sorted(out)]


def _assert_anatomical_order(label_img: sitk.Image) -> None:
    order = _order_along_spine(label_img)
    expected = [s.label for s in DEFAULT_ONTOLOGY.caudal_to_cranial()]
    assert order == [v for v in expected if v in order], f"order {order}"
    kinds = [DEFAULT_ONTOLOGY.by_label(v).kind for v in order]
    for a, b in zip(kinds, kinds[1:], strict=False):  # vertebrae and discs alternate (sacrum below the first disc)
        assert a != b or a == "sacrum"


def test_vertebrae_and_discs_alternate_caudal_to_cranial_each_one_component(procedural_study: Path) -> None:
    for name in ("sag_t2", "sag_t1"):
        img = sitk.ReadImage(str(procedural_study / "labels" / f"{name}.nii.gz"))
        _assert_anatomical_order(img)
        arr = sitk.GetArrayFromImage(img)
        for value in np.unique(arr)[1:]:
            _, n = ndimage.label(arr == value, structure=np.ones((3, 3, 3)))
            assert n == 1, f"{name}: label {value} has {n} components"


def test_truth_lists_every_visible_level_with_all_its_findings(procedural_study: Path) -> None:
    truth = json.loads((procedural_study / "truth.json").read_text())
    assert truth["synthetic"] is True and truth["source"] == "procedural"
    present = set(truth["structures_present"])
    disc_keys = {f.key for f in DEFAULT_ONTOLOGY.findings_at("disc")}
    for s in DEFAULT_ONTOLOGY.structures:
        if s.kind == "sacrum":
            continue
        if s.label in present:
            expected = disc_keys if s.kind == "disc" else {"vertebral_degeneration"}
            assert set(truth["levels"][s.level]) == expected
        else:
            assert s.level not in truth["levels"]
    for f in truth["findings"]:
        assert truth["levels"][f["level"]][f["finding"]] is True
    positives = sum(v for flags in truth["levels"].values() for v in flags.values())
    assert positives == len(truth["findings"]) > 0


def test_generator_runs_without_shared_data(tmp_path: Path) -> None:
    empty = tmp_path / "no_masks"
    empty.mkdir()
    truth = generate_study(tmp_path / "study", 3, SynthConfig(spider_dir=empty, include_axial=False,
                                                               include_localizer=False, **SMALL_TEST_CONFIG))
    assert truth.source == "procedural"
    assert sorted(p.name for p in (tmp_path / "study" / "dicom").iterdir()) == ["sag_t1", "sag_t2"]
    with pytest.raises(SynthError, match="no SPIDER masks"):
        synthesize_case(3, SynthConfig(use_spider=True, spider_dir=empty))


def test_spine_shows_six_to_ten_levels_and_a_sacrum_in_most_studies() -> None:
    counts, sacrum = [], 0
    for seed in range(6):
        case = synthesize_case(seed, SynthConfig(use_spider=False, include_axial=False, include_localizer=False,
                                                 **SMALL_TEST_CONFIG))
        levels = [k for k in case.truth["levels"] if "/" not in k]
        counts.append(len(levels))
        sacrum += DEFAULT_ONTOLOGY.of_kind("sacrum")[0].label in case.truth["structures_present"]
    assert all(5 <= c <= 10 for c in counts), counts
    assert sacrum >= 4


def test_spider_based_study_maps_real_masks_to_the_ontology(shared_data: Path, tmp_path: Path) -> None:
    config = SynthConfig(use_spider=True, spider_dir=shared_data / "spider_masks", include_axial=False,
                         include_localizer=False, **SMALL_TEST_CONFIG)
    truth = generate_study(tmp_path / "spider", 11, config)
    assert truth.source.startswith("spider:")
    img = sitk.ReadImage(str(tmp_path / "spider" / "labels" / "sag_t2.nii.gz"))
    _assert_anatomical_order(img)
    present = set(truth.structures_present)
    for level, kind in (("S1", "sacrum"), ("L5/S1", "disc"), ("L5", "vertebra"), ("L4", "vertebra")):
        assert DEFAULT_ONTOLOGY.by_level(level, kind).label in present
