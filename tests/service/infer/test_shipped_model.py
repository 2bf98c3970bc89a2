"""The model shipped with the project: small enough for git, honest in its card, and it runs as the default."""

from __future__ import annotations

import json

import pytest

from service.config import SHIPPED_MODEL_DIR, Settings
from service.infer.model import OnnxModel

MAX_MB = 60.0


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((SHIPPED_MODEL_DIR / "model.json").read_text())


def test_the_shipped_model_is_the_default_model_directory(monkeypatch):
    monkeypatch.delenv("LUMBAR_AI_MODEL_DIR", raising=False)
    assert Settings(_env_file=None).model_dir == SHIPPED_MODEL_DIR


def test_shipped_model_fits_in_git_and_carries_no_text_encoder():
    files = {f.name: f.stat().st_size for f in SHIPPED_MODEL_DIR.iterdir()}
    assert sum(files.values()) <= MAX_MB * 1e6
    assert {"image_encoder.onnx", "fusion_head.onnx", "prompt_embeddings.npz", "model.json", "curves.png",
            "contact_sheet.png"} <= set(files)
    assert "text_encoder.onnx" not in files


def test_card_says_it_is_no_medical_device_and_what_trained_and_validated_it(card):
    assert "Not a medical device" in card["intended_use"]
    assert "trained partly on synthetic data" in card["training"]["statement"]
    sources = card["training"]["data_sources"]
    assert sources and all(s.get("licence") for s in sources)
    validation = card["metrics"]["real_validation"]
    assert len(validation["cases"]) == 18
    assert {c.split("/")[0] for c in validation["cases"]} == {"vb1", "vb2", "vb3", "ivd"}
    assert not set(validation["cases"]) & set(card["training"]["real_training_cases"])
    assert {m["output"] for m in validation["scores"]} == {"delivered", "raw"}
    assert card["metrics"]["generated_test"]["scores"]
    assert card["export_parity"]["label_map"]["voxel_agreement"] >= 0.999


def test_shipped_model_loads_and_finds_a_spine_on_a_generated_study(tmp_path):
    from model_export.data import read_generated_study
    from model_export.synth import SynthConfig, generate_study
    from model_export.synth.config import SMALL_TEST_CONFIG

    config = SynthConfig(use_spider=False, include_axial=False, include_localizer=False, **SMALL_TEST_CONFIG)
    generate_study(tmp_path / "study", seed=424242, config=config)
    case = read_generated_study(tmp_path / "study")
    model = OnnxModel.load(SHIPPED_MODEL_DIR, intra_op_threads=2)
    prediction = model.predict(case.t2, case.t1, case.pixel_spacing)
    found = {int(v) for v in set(prediction.labels.ravel().tolist())} - {0}
    assert len(found) >= 5  # several vertebrae and discs, not background everywhere
