"""The export checks itself, and the ONNX-only OnnxModel reproduces torch on a generated study."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from model_export.data import read_generated_study
from model_export.export import export_model
from model_export.model.network import load_checkpoint
from model_export.model.predict import predict_volume
from service.errors import ModelExportError
from service.infer.model import OnnxModel


def test_export_writes_the_model_directory_with_a_complete_card(tiny_model_dir):
    for name in ("image_encoder.onnx", "fusion_head.onnx", "prompt_embeddings.npz", "model.json"):
        assert (tiny_model_dir / name).is_file(), name
    for name in ("text_encoder.onnx", "tokenizer.json"):  # the stored embeddings replace them
        assert not (tiny_model_dir / name).exists(), name
    card = json.loads((tiny_model_dir / "model.json").read_text())
    assert "synthetic data only" in card["training"]["statement"]
    assert card["input"]["channels"] == ["T2", "T1"]
    assert set(card["finding_thresholds"]) == {"disc_bulging", "disc_protrusion", "disc_extrusion",
                                               "schmorl_node", "vertebral_degeneration"}
    assert {"torch", "onnx", "onnxruntime"} <= set(card["versions"])
    parity = card["export_parity"]
    assert parity["label_map"]["voxel_agreement"] >= 0.999
    assert parity["onnxruntime_vs_torch"]["image_encoder.onnx"]["features"] <= parity["onnxruntime_vs_torch"]["tolerance"]


def test_exported_weights_are_stored_as_float16_and_the_card_says_so(tiny_model_dir):
    from onnx import TensorProto

    image = onnx.load(str(tiny_model_dir / "image_encoder.onnx"))
    types = {i.name: i.data_type for i in image.graph.initializer}
    assert sum(t == TensorProto.FLOAT16 for t in types.values()) >= 10
    assert all(t != TensorProto.FLOAT or np.prod(i.dims) < 1024 for i, t in zip(image.graph.initializer, types.values(),
                                                                             strict=True))
    parity = json.loads((tiny_model_dir / "model.json").read_text())["export_parity"]["onnxruntime_vs_torch"]
    assert parity["weights"] == "float16, computed in float32"


def test_stored_prompt_embeddings_are_what_the_exported_text_encoder_computes(tiny_checkpoint, tmp_path):
    from service.infer.onnx_session import OnnxGraph
    from service.infer.prompt_embeddings import embed_ontology_prompts, read_prompt_embeddings

    out = tmp_path / "with-text"
    card = export_model(tiny_checkpoint, out, float16=False, with_text_encoder=True)
    assert "embeddings" not in card["text"]
    structures, findings = embed_ontology_prompts(out, card, OnnxGraph(out / "text_encoder.onnx"))
    stored_card = json.loads((out / "model.json").read_text())
    export_model(tiny_checkpoint, out)  # again into the same folder, as shipped
    assert not (out / "text_encoder.onnx").exists() and not (out / "tokenizer.json").exists()
    stored = read_prompt_embeddings(out, json.loads((out / "model.json").read_text()))
    np.testing.assert_allclose(stored[0], structures, atol=1e-5)
    np.testing.assert_allclose(stored[1], findings, atol=1e-5)
    assert stored_card["export_parity"]["onnxruntime_vs_torch"]["weights"] == "float32"


def test_exported_graphs_declare_dynamic_batch_size_and_class_count(tiny_model_dir):
    fusion = onnx.load(str(tiny_model_dir / "fusion_head.onnx"))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in fusion.graph.input}
    assert dims["structure_embeddings"][0] == "classes"
    assert dims["features"][0] == "batch" and dims["output_grid"][2:] == ["rows", "cols"]
    image = onnx.load(str(tiny_model_dir / "image_encoder.onnx"))
    assert [d.dim_param for d in image.graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]


def test_onnx_only_prediction_matches_torch_on_a_generated_study(tiny_model_dir, tiny_checkpoint,
                                                                 tiny_generated_study):
    case = read_generated_study(tiny_generated_study)
    model = OnnxModel.load(tiny_model_dir, intra_op_threads=1)
    got = model.predict(case.t2, case.t1, case.pixel_spacing, slice_batch=4)
    torch_model, ckpt = load_checkpoint(tiny_checkpoint)
    expected = predict_volume(torch_model, case.t2, case.t1, torch_model.cfg.view())
    assert got.labels.shape == case.t2.shape and got.labels.dtype == np.uint8
    assert (got.labels == expected.labels).mean() >= 0.999
    assert {"preprocess", "image_encoder", "fusion_head"} <= set(got.timings)


@pytest.mark.parametrize("missing", ["t1", "t2"])
def test_one_sequence_alone_still_gives_a_label_map_and_site_matched_findings(tiny_model_dir, tiny_generated_study,
                                                                              missing):
    case = read_generated_study(tiny_generated_study)
    model = OnnxModel.load(tiny_model_dir)
    t2 = None if missing == "t2" else case.t2
    t1 = None if missing == "t1" else case.t1
    pred = model.predict(t2, t1, case.pixel_spacing)
    assert pred.labels.shape == case.labels.shape
    for label, probs in pred.finding_probs.items():
        kind = model.ontology.by_label(label).kind
        assert set(probs) == {f.key for f in model.ontology.findings_at(kind)}
        assert all(0.0 <= p <= 1.0 for p in probs.values())


def test_export_refuses_a_baseline_checkpoint(tiny_cases, tmp_path):
    import dataclasses

    from model_export.configs import get_config
    from model_export.training.loop import train
    run = get_config("tiny").with_kind("unet")
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, steps=1, validation_cases=0))
    checkpoint = train(tiny_cases, run, tmp_path / "unet", progress=False)
    assert load_checkpoint(checkpoint)[1]["run"]["model"]["kind"] == "unet"
    with pytest.raises(ModelExportError, match="unet"):
        export_model(checkpoint, tmp_path / "out")


def test_anatomical_order_counts_swapped_levels():
    from model_export.evaluation.real_scan import anatomical_order
    from service.ontology import DEFAULT_ONTOLOGY as O

    labels = np.zeros((1, 60, 10), dtype=np.uint8)
    labels[0, 0:10] = O.by_level("L3", "vertebra").label
    labels[0, 10:20] = O.by_level("L3/L4", "disc").label
    labels[0, 20:30] = O.by_level("L5", "vertebra").label  # L5 drawn above L4: one swap with L4
    labels[0, 30:40] = O.by_level("L4", "vertebra").label
    result = anatomical_order(labels, O, min_voxels=5)
    assert [r["structure"] for r in result["cranial_to_caudal"]] == ["L3 vertebra", "L3/L4 disc", "L5 vertebra",
                                                                     "L4 vertebra"]
    assert result["out_of_order_pairs"] == 1


def test_real_scan_overlay_runs_with_t2_alone(tiny_model_dir, shared_data, tmp_path):
    from model_export.evaluation.real_scan import overlay_real_scan
    from service.ontology import DEFAULT_ONTOLOGY as O

    image = shared_data / "real" / "sct_t2_lumbar.nii.gz"
    summary = overlay_real_scan(tiny_model_dir, image, tmp_path / "overlay.png")
    assert (tmp_path / "overlay.png").stat().st_size > 10_000
    assert summary["shape"][1:] == [201, 257]
    # counting orders the delivered discs; an untrained model's vertebra blobs need not follow them
    discs = [r["structure"] for r in summary["post_processed"]["cranial_to_caudal"] if r["structure"].endswith("disc")]
    expected = [s.name for s in reversed(O.caudal_to_cranial()) if s.name in discs]
    assert discs == expected
    assert isinstance(summary["out_of_order_pairs"], int)


def test_parity_compares_per_slice_sums_relative_to_their_size(tmp_path):
    """finding_mass sums thousands of exp(logit) terms: float32 rounding of 1e9 is ~100 in absolute terms,
    which is agreement, not a failed export."""
    import torch

    from model_export.export import _export, _max_diff

    class Sums(torch.nn.Module):
        def forward(self, x):
            return torch.exp(x.clamp(max=12.0)).sum(dim=(2, 3)), x * 2

    x = torch.full((1, 3, 80, 80), 11.9) + torch.rand(1, 3, 80, 80) * 0.1
    path = tmp_path / "sums.onnx"
    _export(Sums(), (x,), path, ["x"], ["finding_mass", "logits"], {"x": {0: "batch"}}, float16=False)
    diffs = _max_diff(Sums(), path, ["x"], (x,), ["finding_mass", "logits"])
    assert set(diffs) == {"finding_mass_relative", "logits"}
    assert diffs["finding_mass_relative"] < 1e-5 and diffs["logits"] < 1e-5


def test_card_carries_the_tuned_disc_finding_combiners_and_the_service_loads_them(tiny_checkpoint, tiny_model_dir,
                                                                                   tmp_path):
    import shutil

    import torch

    from model_export.model_card import build_card
    from service.infer.level_findings import LEARNED

    combiner = {"features": [LEARNED, "posterior_extent_mm", "migration_mm"], "mean": [0.0, 1.0, 0.0],
                "scale": [1.0, 2.0, 1.0], "weights": [0.5, 3.0, 0.0], "bias": -2.0, "threshold": 0.6}
    ckpt = torch.load(str(tiny_checkpoint), map_location="cpu", weights_only=False)
    ckpt["finding_combiners"] = {"disc_protrusion": combiner}
    assert build_card(ckpt, {}, {}, "tiny", "0.1.0", None)["finding_combiners"] == {"disc_protrusion": combiner}
    model_dir = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, model_dir)
    card = json.loads((model_dir / "model.json").read_text())
    assert card["finding_combiners"] == {}  # the tiny run was never tuned
    card["finding_combiners"] = {"disc_protrusion": combiner}
    (model_dir / "model.json").write_text(json.dumps(card))
    assert OnnxModel.load(model_dir).finding_combiners["disc_protrusion"].threshold == 0.6


def test_card_carries_the_exclusive_findings_and_the_service_refuses_a_malformed_group(tiny_checkpoint,
                                                                                       tiny_model_dir, tmp_path):
    import shutil

    import torch

    from model_export.model_card import build_card
    from service.errors import ModelDirectoryError

    contour = [["disc_bulging", "disc_protrusion", "disc_extrusion"]]
    ckpt = torch.load(str(tiny_checkpoint), map_location="cpu", weights_only=False)
    assert build_card(ckpt, {}, {}, "tiny", "0.1.0", None)["exclusive_findings"] == []  # before train-levels
    ckpt["exclusive_findings"] = contour
    assert build_card(ckpt, {}, {}, "tiny", "0.1.0", None)["exclusive_findings"] == contour
    model_dir = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, model_dir)
    card = json.loads((model_dir / "model.json").read_text())
    card["exclusive_findings"] = contour
    (model_dir / "model.json").write_text(json.dumps(card))
    assert OnnxModel.load(model_dir).exclusive_findings == (("disc_bulging", "disc_protrusion", "disc_extrusion"),)
    card["exclusive_findings"] = [["disc_bulging", "disc_herniation"]]
    (model_dir / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirectoryError, match="exclusive_findings"):
        OnnxModel.load(model_dir)


@pytest.mark.parametrize("section, message", [
    ({"crop": {"size_mm": 120.0, "pixels": 100}}, "out of range"),
    ({"graph": "outline_refiner.onnx"}, "must hold a crop section"),
    ({"crop": {"size_mm": 120.0, "pixels": 128}}, "outline_refiner.onnx"),  # the card names a graph not there
])
def test_the_service_refuses_a_card_whose_outline_refiner_it_cannot_run(tiny_model_dir, tmp_path, section, message):
    import shutil

    from service.errors import ModelDirectoryError

    model_dir = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, model_dir)
    card = json.loads((model_dir / "model.json").read_text())
    card["outline_refiner"] = section
    (model_dir / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirectoryError, match=message):
        OnnxModel.load(model_dir)


def test_band_model_onnx_prediction_matches_torch_through_a_box_that_leaves_the_slice(
        tiny_cases, tiny_generated_study, tmp_path, monkeypatch):
    """Also a model with a convolutional finding branch whose pooling widens each mask: the card carries
    the width to the service."""
    import dataclasses

    from model_export.configs import get_config
    from model_export.export import export_model
    from model_export.training.loop import train
    from service.infer.input_view import InputView, SliceBox

    run = get_config("tiny")
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, band_size=(96, 64), finding_pool_dilation=2,
                                                                 finding_conv_layers=2))
    checkpoint = train(tiny_cases, run, tmp_path / "run", progress=False)
    case = read_generated_study(tiny_generated_study)
    export_model(checkpoint, tmp_path / "model", parity_study=case)
    model = OnnxModel.load(tmp_path / "model", intra_op_threads=1)
    assert model.view.band_size == (96, 64)
    assert model.finding_pool_dilation == 2
    _, rows, cols = case.t2.shape
    box = SliceBox(-rows // 8, cols // 3, rows + rows // 4, (rows + rows // 4) * 2 // 3)
    monkeypatch.setattr(InputView, "band_box", lambda self, labels: box)  # a box past the bottom and right
    got = model.predict(case.t2, case.t1, case.pixel_spacing, slice_batch=4)
    torch_model, _ = load_checkpoint(checkpoint)
    expected = predict_volume(torch_model, case.t2, case.t1, torch_model.cfg.view())
    assert (got.labels == expected.labels).mean() >= 0.999
    # the per-pixel finding logits are read through the box: same pixels, same numbers in both runtimes
    assert got.finding_maps is not None and expected.finding_maps is not None
    assert got.finding_maps.box == expected.finding_maps.box == box
    assert got.finding_maps.logits.shape[-2:] == expected.finding_maps.logits.shape[-2:] == (96, 64)
    np.testing.assert_allclose(got.finding_maps.logits, expected.finding_maps.logits, atol=2e-3)
    assert got.finding_maps.dilation == expected.finding_maps.dilation == 2
    for label, pooled in expected.finding_maps.pool(expected.labels).items():
        np.testing.assert_allclose(got.finding_maps.pool(expected.labels)[label], pooled, atol=2e-3)
    assert {"survey_image_encoder", "image_encoder"} <= set(got.timings)
