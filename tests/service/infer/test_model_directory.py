"""The ONNX-only model path: bad model directories fail with ModelDirectoryError; preprocessing is sound.

These tests need no trained model (tests/model_export/model/test_model_export.py runs a real export).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.errors import InferenceError, ModelDirectoryError
from service.infer.model import (
    OnnxModel,
    model_input,
    normalise_intensity,
    pool_findings,
    resize_matrix,
    resize_slices,
)
from service.ontology import DEFAULT_ONTOLOGY


def test_missing_model_card_names_the_directory(tmp_path):
    with pytest.raises(ModelDirectoryError, match="no model.json"):
        OnnxModel.load(tmp_path)


def test_malformed_model_card_is_rejected(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"ontology": {"structures": []}}))
    with pytest.raises(ModelDirectoryError, match="malformed"):
        OnnxModel.load(tmp_path)


@pytest.mark.parametrize("dilation", [-1, 1.5, "2", True])
def test_card_with_a_bad_finding_pool_dilation_is_refused_at_load(tmp_path, dilation):
    card = {"ontology": DEFAULT_ONTOLOGY.to_dict(), "input": {"size": [64, 64]},
            "finding_pooling": {"dilation_px": dilation}}
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirectoryError, match="dilation_px"):
        OnnxModel.load(tmp_path)


def test_missing_graph_is_named(tmp_path):
    card = {"ontology": DEFAULT_ONTOLOGY.to_dict(), "input": {"size": [64, 64]}}
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirectoryError, match="image_encoder.onnx"):
        OnnxModel.load(tmp_path)


def test_corrupt_graph_is_a_model_directory_error(tmp_path):
    card = {"ontology": DEFAULT_ONTOLOGY.to_dict(), "input": {"size": [64, 64]}}
    (tmp_path / "model.json").write_text(json.dumps(card))
    for name in ("image_encoder.onnx", "text_encoder.onnx", "fusion_head.onnx"):
        (tmp_path / name).write_bytes(b"not an onnx graph")
    with pytest.raises(ModelDirectoryError, match="cannot load ONNX graph"):
        OnnxModel.load(tmp_path)


def test_resize_matrix_rows_are_normalised_and_identity_at_equal_size():
    for n_in, n_out in ((512, 160), (160, 512), (37, 37), (5, 3)):
        m = resize_matrix(n_in, n_out)
        assert m.shape == (n_out, n_in)
        assert np.allclose(m.sum(axis=1), 1.0, atol=1e-6)
    assert np.allclose(resize_matrix(37, 37), np.eye(37))


def test_downscaled_constant_stays_constant_and_noise_is_averaged_not_aliased():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (1, 512, 512)).astype(np.float32)
    small = resize_slices(noise + 5.0, (128, 128))
    assert small.shape == (1, 128, 128)
    assert abs(float(small.mean()) - 5.0) < 0.01
    assert (
        float(small.std()) < 0.35
    )  # an antialiased 4x shrink averages ~16 pixels; plain sampling keeps SD 1


def test_model_input_orders_channels_t2_t1_and_zeros_a_missing_sequence():
    t2 = np.full((3, 40, 40), 100.0, dtype=np.float32)
    x = model_input(t2, None, (16, 16))
    assert x.shape == (3, 2, 16, 16) and x.dtype == np.float32
    assert np.allclose(x[:, 0], 1.0) and np.all(x[:, 1] == 0)
    with pytest.raises(InferenceError):
        model_input(None, None, (16, 16))
    with pytest.raises(InferenceError, match="one grid"):
        model_input(t2, np.zeros((3, 40, 41), dtype=np.float32), (16, 16))


def test_normalisation_maps_the_percentile_to_one_and_handles_empty_images():
    v = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    out = normalise_intensity(v, 50.0, (0.0, 2.0))
    assert out.max() == 2.0 and abs(float(np.median(out)) - 1.0) < 0.01
    assert not normalise_intensity(np.zeros((2, 4, 4))).any()


def test_pooled_findings_are_a_log_mean_exp_over_all_slices():
    # one structure, one finding; logits 0 on slice 0 (mass 1) and log(3) on slice 1 (mass 1)
    class_mass = np.array([[1.0], [1.0]])
    finding_mass = np.array([[[1.0]], [[3.0]]])
    assert pool_findings(class_mass, finding_mass)[0, 0] == pytest.approx(np.log(2.0))


def test_non_square_slices_are_padded_to_a_square_not_stretched():
    t2 = np.full((1, 40, 20), 100.0, dtype=np.float32)
    x = model_input(t2, None, (16, 16))
    assert np.allclose(x[0, 0, :, :7], 1.0, atol=1e-5)  # the image fills the left half...
    assert np.allclose(x[0, 0, :, 9:], 0.0, atol=1e-5)  # ...and the padding the right half


def _card_with_stored_embeddings(folder) -> dict:
    from service.infer.prompt_embeddings import write_prompt_embeddings

    k, f = len(DEFAULT_ONTOLOGY.structures), len(DEFAULT_ONTOLOGY.findings)
    rng = np.random.default_rng(0)
    section = write_prompt_embeddings(folder, DEFAULT_ONTOLOGY, rng.normal(size=(k, 8)), rng.normal(size=(f, 8)))
    return {"ontology": DEFAULT_ONTOLOGY.to_dict(), "input": {"size": [64, 64]}, "text": {"embeddings": section}}


def test_card_whose_prompts_were_edited_after_export_is_refused_rather_than_guided_by_stale_embeddings(tmp_path):
    card = _card_with_stored_embeddings(tmp_path)
    card["ontology"]["structures"][0]["prompts"] = ["the os sacrum"]
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirectoryError, match="other prompts"):
        OnnxModel.load(tmp_path)


def test_stored_embeddings_of_the_wrong_class_count_are_refused(tmp_path):
    card = _card_with_stored_embeddings(tmp_path)
    with np.load(tmp_path / "prompt_embeddings.npz") as stored:
        np.savez(tmp_path / "prompt_embeddings.npz", structures=stored["structures"][:5], findings=stored["findings"])
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirectoryError, match="19 structures"):
        OnnxModel.load(tmp_path)

