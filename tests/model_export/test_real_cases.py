"""Real labelled case folders: case.json says what is labelled; everything else is unknown."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_export.data import discover_cases
from model_export.real_cases import (
    RANK_BASE,
    anterior_background,
    certain_background,
    discover_real_cases,
    read_real_case,
    split_real_cases,
)
from service.errors import ConfigError


def test_t2_case_reads_as_partial_with_its_stated_labels(tmp_path, write_real_case, bodies):
    case = read_real_case(write_real_case(tmp_path / "vb2" / "case01", bodies([2, 3, 4])), "vb2/case01")
    assert case.partial and case.level_known
    assert case.labelled == frozenset({2, 3, 4})
    assert case.t2 is not None and case.t1 is None
    assert case.labels.shape == case.t2.shape == (4, 60, 40)
    assert case.slice_spacing == 3.0


def test_image_that_is_neither_t1_nor_t2_joins_as_the_t2_channel(tmp_path, write_real_case, bodies):
    case = read_real_case(write_real_case(tmp_path / "c", bodies([2, 3]), image_name="image"))
    assert case.t2 is not None and case.t1 is None


def test_t1_case_fills_the_t1_channel(tmp_path, write_real_case, bodies):
    case = read_real_case(write_real_case(tmp_path / "c", bodies([2, 3]), image_name="t1"))
    assert case.t1 is not None and case.t2 is None


def test_ranked_bodies_of_unknown_level_read_as_level_unknown(tmp_path, write_real_case, bodies):
    ranks = [RANK_BASE + 1, RANK_BASE + 2, RANK_BASE + 3]
    case = read_real_case(write_real_case(tmp_path / "c", bodies(ranks)))
    assert not case.level_known
    assert case.labelled == frozenset(ranks)


def test_case_json_mixing_levels_and_ranks_is_refused_with_the_file_name(tmp_path, write_real_case, bodies):
    folder = write_real_case(tmp_path / "c", bodies([2, RANK_BASE + 1]))
    with pytest.raises(ConfigError, match="case.json"):
        read_real_case(folder)


def test_labels_holding_a_value_case_json_does_not_list_are_refused(tmp_path, write_real_case, bodies):
    folder = write_real_case(tmp_path / "c", bodies([2, 3]), values=[2])
    with pytest.raises(ConfigError, match=r"values \[3\]"):
        read_real_case(folder)


def test_case_json_without_label_values_is_refused(tmp_path, write_real_case, bodies):
    folder = write_real_case(tmp_path / "c", bodies([2]))
    (folder / "case.json").write_text("{}")
    with pytest.raises(ConfigError, match="label_values"):
        read_real_case(folder)


def test_discovery_names_nested_cases_by_their_path_and_train_discovers_them_too(tmp_path, write_real_case, bodies):
    write_real_case(tmp_path / "vb3" / "case02", bodies([2, 3]))
    write_real_case(tmp_path / "ivd" / "case20", bodies([11, 12]))
    names = [n for n, _ in discover_real_cases(tmp_path)]
    assert names == ["ivd/case20", "vb3/case02"]
    assert [n for n, _ in discover_cases(tmp_path)] == names


def test_split_keeps_validation_cases_out_of_training(tmp_path, write_real_case, bodies):
    for name in ("a/case1", "a/case2", "b/case3"):
        write_real_case(tmp_path / name, bodies([2]))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"validation": ["a/case2"]}))
    found = discover_real_cases(tmp_path)
    assert [n for n, _ in split_real_cases(found, split, "training")] == ["a/case1", "b/case3"]
    assert [n for n, _ in split_real_cases(found, split, "validation")] == ["a/case2"]


def test_committed_split_holds_the_disc_cases_and_enough_of_each_set():
    from model_export.real_cases import read_split

    validation = read_split()["validation"]
    groups = {g: sum(name.startswith(g + "/") for name in validation) for g in ("vb3", "vb2", "vb1", "ivd")}
    assert groups["vb3"] >= 8 and groups["vb2"] >= 3 and groups["vb1"] >= 2 and groups["ivd"] == 2


def test_anterior_background_starts_20_mm_in_front_of_the_labels_and_spans_their_rows_only():
    labels = np.zeros((2, 30, 60), dtype=np.uint8)
    labels[0, 10:20, 40:50] = 3
    front = anterior_background(labels, (1.0, 1.0))
    assert front[0, 15, :20].all() and not front[0, 15, 20:].any()
    assert not front[0, :10].any() and not front[0, 20:].any()
    assert not front[1].any()  # a slice without labels claims nothing
    assert anterior_background(labels, (1.0, 2.0))[0, 15, :30].all()  # 2 mm columns: 10 columns of margin


def test_certain_background_extends_in_front_of_the_end_rows_above_and_below_the_labels():
    labels = np.zeros((2, 40, 60), dtype=np.uint8)
    labels[0, 10:20, 40:50] = 3  # upper body, front edge at column 40
    labels[0, 22:30, 35:45] = 2  # lower body, front edge at column 35
    certain = certain_background(labels, (1.0, 1.0))
    assert certain[0, 0, :20].all() and not certain[0, 0, 20:].any()  # above: the top row's edge
    assert certain[0, 39, :15].all() and not certain[0, 39, 15:].any()  # below: the bottom row's edge
    assert (certain[0, 10:30] == anterior_background(labels, (1.0, 1.0))[0, 10:30]).all()
    assert not certain[1].any()  # still nothing on a slice without labels


def test_card_data_sources_name_every_real_set_its_licence_and_cases():
    from model_export.model_card import SYNTHETIC_STATEMENT, training_statement
    from model_export.real_cases import data_sources

    provenance = {"training_cases": ["study_1", "study_2"], "validation_cases": ["study_3"],
                  "real_training_cases": ["vb3/case03", "vb1/case03"], "real_share": 0.5}
    sources = data_sources(provenance)
    assert sources[0]["training_cases"] == 2 and "CC BY 4.0" in sources[0]["label_maps"]
    real = {s["name"]: s for s in sources[1:]}
    assert real["real labelled scans vb3/"]["training_cases"] == ["vb3/case03"]
    assert "GPL-3.0" in real["real labelled scans vb3/"]["licence"]
    assert real["real labelled scans ivd/"]["training_cases"] == []
    assert len(real["real labelled scans ivd/"]["validation_cases"]) == 2
    assert "partly on synthetic data" in training_statement(provenance)
    assert training_statement({"training_cases": ["study_1"]}) == SYNTHETIC_STATEMENT
    assert len(data_sources({"training_cases": []})) == 1
