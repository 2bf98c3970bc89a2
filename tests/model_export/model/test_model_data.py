"""Dataset readers map labels into the ontology and keep every source on its reference grid."""

from __future__ import annotations

import numpy as np

from model_export.data import discover_cases, findings_from_truth, read_volume_case, spider_to_ontology
from model_export.training.prepare import prepare_case, resize_labels_nearest
from service.infer.input_view import InputView
from service.ontology import DEFAULT_ONTOLOGY


def test_spider_labels_map_to_ontology_numbering_with_canal_as_background():
    mask = np.array([[1, 2, 9, 100, 201, 202, 209, 10]], dtype=np.uint16)
    out = spider_to_ontology(mask)
    o = DEFAULT_ONTOLOGY
    expected = [o.by_level("L5", "vertebra").label, o.by_level("L4", "vertebra").label,
                o.by_level("T9", "vertebra").label, 0, o.by_level("L5/S1", "disc").label,
                o.by_level("L4/L5", "disc").label, o.by_level("T9/T10", "disc").label, 0]
    assert out.tolist() == [expected]


def test_truth_levels_become_findings_per_structure_label_with_site_checked():
    levels = {"L4/L5": {"disc_protrusion": True, "disc_bulging": False, "vertebral_degeneration": True},
              "L4": {"vertebral_degeneration": True}, "C2": {"disc_bulging": True}}
    out = findings_from_truth(levels)
    disc = DEFAULT_ONTOLOGY.by_level("L4/L5", "disc").label
    vertebra = DEFAULT_ONTOLOGY.by_level("L4", "vertebra").label
    assert out == {disc: {"disc_protrusion": True, "disc_bulging": False}, vertebra: {"vertebral_degeneration": True}}


def test_volume_case_folder_reads_t2_t1_and_labels_on_one_grid(tiny_cases):
    names = [name for name, _ in discover_cases(tiny_cases)]
    assert names == ["case0", "case1", "case2"]
    case = read_volume_case(tiny_cases / "case0")
    assert case.t2.shape == case.t1.shape == case.labels.shape == (6, 72, 48)
    assert case.labelled == frozenset(range(1, 20))
    prepared = prepare_case(case, InputView((32, 32)), DEFAULT_ONTOLOGY)
    assert prepared.image.shape == (6, 2, 32, 32) and prepared.target.shape == (6, 32, 32)


def test_volume_case_grid_puts_rows_toward_the_feet_and_slices_toward_the_right(tiny_cases):
    grid = read_volume_case(tiny_cases / "case0").grid()
    assert grid.slice_spacing == 4.0 and grid.pixel_spacing == (1.0, 1.0)
    np.testing.assert_allclose(grid.index_to_patient(np.array([0, 1, 0])), [0, 0, -1.0])  # next row: inferior
    np.testing.assert_allclose(grid.index_to_patient(np.array([0, 0, 1])), [0, 1.0, 0])  # next column: posterior
    np.testing.assert_allclose(grid.index_to_patient(np.array([1, 0, 0])), [-4.0, 0, 0])  # next slice: right


def test_volume_case_reads_the_findings_its_findings_json_states(tiny_cases, tmp_path):
    import json
    import shutil

    import pytest

    from service.errors import ConfigError

    case_dir = tmp_path / "case"
    shutil.copytree(tiny_cases / "case0", case_dir)
    assert read_volume_case(case_dir).findings == {}
    (case_dir / "findings.json").write_text(json.dumps({"levels": {"L4/L5": {"disc_protrusion": True},
                                                                   "L4": {"vertebral_degeneration": False}}}))
    disc, vertebra = (DEFAULT_ONTOLOGY.by_level("L4/L5", "disc").label,
                      DEFAULT_ONTOLOGY.by_level("L4", "vertebra").label)
    assert read_volume_case(case_dir).findings == {disc: {"disc_protrusion": True},
                                                   vertebra: {"vertebral_degeneration": False}}
    (case_dir / "findings.json").write_text(json.dumps({"L4/L5": "protrusion"}))
    with pytest.raises(ConfigError, match="findings.json"):
        read_volume_case(case_dir)


def test_nearest_label_resize_keeps_only_existing_labels():
    labels = np.random.default_rng(0).integers(0, 5, (2, 17, 23)).astype(np.uint8)
    out = resize_labels_nearest(labels, (8, 40))
    assert out.shape == (2, 8, 40)
    assert set(np.unique(out)) <= set(np.unique(labels))
