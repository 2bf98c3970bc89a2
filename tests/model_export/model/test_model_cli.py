"""Each model CLI runs on a tiny generated set: train, export, evaluate, build-demo-model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main


@pytest.fixture(scope="module")
def generated_set(tmp_path_factory) -> Path:
    from model_export.demo_model import generate_studies

    return generate_studies(tmp_path_factory.mktemp("generated_set"), 3, 7000, None, small=True)


@pytest.fixture(scope="module")
def trained_runs(generated_set, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for variant, steps in (("text_guided", "4"), ("unet", "2")):
        out = root / variant
        assert main(["train", "--data", str(generated_set), "--config", "tiny", "--variant", variant,
                     "--steps", steps, "--out", str(out), "--no-progress"]) == 0
        runs[variant] = out / "final.pt"
    return runs


def test_train_cli_writes_a_checkpoint_and_curves(trained_runs):
    for checkpoint in trained_runs.values():
        assert checkpoint.is_file()
        assert (checkpoint.parent / "curves.png").stat().st_size > 1000


def test_export_then_evaluate_cli_compare_the_onnx_model_with_a_baseline(trained_runs, generated_set, tmp_path):
    model_dir = tmp_path / "models" / "tiny"
    study = sorted(generated_set.iterdir())[0]
    assert main(["export", "--checkpoint", str(trained_runs["text_guided"]), "--out", str(model_dir),
                 "--parity-study", str(study)]) == 0
    assert json.loads((model_dir / "model.json").read_text())["export_parity"]["label_map"]["voxel_agreement"] >= 0.999
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--models", str(model_dir), str(trained_runs["unet"]), "--names", "ours", "unet",
                 "--data", str(generated_set), "--out", str(out), "--postprocess"]) == 0
    summary = json.loads((out / "evaluation.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["ours", "ours +post", "unet", "unet +post"]
    assert summary["models"][0]["cases"] == summary["models"][1]["cases"] == 3
    assert summary["models"][0]["findings"]["overall"]["tp"] + summary["models"][0]["findings"]["overall"]["fn"] >= 0
    assert summary["models"][2]["findings"] is None
    assert [(c["reference"], c["other"]) for c in summary["comparisons"]] == [
        ("ours", "unet"), ("ours +post", "unet +post"), ("ours", "ours +post")]
    assert "Wilcoxon" in (out / "evaluation.md").read_text()
    assert (out / "evaluation.png").stat().st_size > 1000
    assert (out / "worst_cases.png").stat().st_size > 1000
    for m in summary["models"]:
        assert sum(m["miou_loss"].values()) == pytest.approx(1 - m["miou"])


def test_tune_thresholds_cli_writes_a_checkpoint_copy_with_thresholds_and_where_they_came_from(
        trained_runs, generated_set, tmp_path, capsys):
    import torch

    out = tmp_path / "tuned.pt"
    assert main(["tune-thresholds", "--checkpoint", str(trained_runs["text_guided"]), "--data", str(generated_set),
                 "--out", str(out)]) == 0
    tuned = torch.load(str(out), map_location="cpu", weights_only=False)
    keys = {"disc_bulging", "disc_protrusion", "disc_extrusion", "schmorl_node", "vertebral_degeneration"}
    assert set(tuned["finding_thresholds"]) == keys
    provenance = tuned["provenance"]["thresholds_tuned_on"]
    assert len(provenance["cases"]) == 3 and set(provenance["per_finding"]) == keys
    # each disc finding's combiner is reported, and kept only where cross-validation favoured it
    assert set(provenance["combiners"]) == keys - {"vertebral_degeneration"}
    assert set(tuned["finding_combiners"]) == {k for k, r in provenance["combiners"].items() if r["kept"]}
    assert json.loads(capsys.readouterr().out)["cases"] == 3


def test_tune_thresholds_cli_refuses_a_model_without_finding_head(trained_runs, generated_set, tmp_path, capsys):
    assert main(["tune-thresholds", "--checkpoint", str(trained_runs["unet"]), "--data", str(generated_set),
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "no finding head" in capsys.readouterr().err


def test_train_cli_names_a_missing_data_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["train", "--data", str(missing), "--config", "tiny", "--out", str(tmp_path / "r")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_train_cli_refuses_a_spine_band_size_the_encoder_cannot_tile(generated_set, tmp_path, capsys):
    assert main(["train", "--data", str(generated_set), "--config", "tiny", "--spine-band", "100", "64",
                 "--out", str(tmp_path / "r")]) == 2
    assert "multiples of 32" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("flag", "value", "message"), [("--finding-dilation", "-1", "0 to 16 model pixels"),
                                                      ("--finding-conv-layers", "9", "give 0 to 8")])
def test_train_refuses_a_finding_branch_setting_out_of_range(generated_set, tmp_path, capsys, flag, value, message):
    assert main(["train", "--data", str(generated_set), "--config", "tiny", flag, value,
                 "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_build_demo_model_builds_once_then_reuses_the_cache(tmp_path):
    models = tmp_path / "models"
    args = ["build-demo-model", "--models-dir", str(models), "--config", "tiny", "--studies", "3", "--budget-s", "60"]
    assert main(args) == 0
    card = models / "demo" / "model.json"
    assert json.loads(card.read_text())["name"] == "demo"
    assert "level_classifier" in json.loads(card.read_text())  # the demo scores findings from crops
    assert (models / "demo" / "level_classifier.onnx").is_file()
    stamp = card.stat().st_mtime_ns
    assert main(args) == 0
    assert card.stat().st_mtime_ns == stamp


def test_finding_pooling_comparison_reports_each_pooling_with_rates_and_auc(trained_runs, generated_set, tmp_path,
                                                                             capsys):
    from model_export.evaluation.finding_pooling import POOLINGS, auc
    from model_export.evaluation.finding_pooling import main as pooling_main

    out = tmp_path / "pooling.json"
    assert pooling_main(["--checkpoint", str(trained_runs["text_guided"]), "--val", str(generated_set),
                         "--test", str(generated_set), "--out", str(out), "--dilations", "0", "2"]) == 0
    report = json.loads(out.read_text())
    widened = ["delivered_structures_widened_0", "delivered_structures_widened_2"]
    assert set(report) == {*POOLINGS, *widened}
    # the tiny model was trained without widening: widening by 0 is its own delivered pooling
    assert report[widened[0]]["overall"] == report["delivered_structures"]["overall"]
    for pooling in report:
        overall = report[pooling]["overall"]
        assert overall["tp"] + overall["fp"] + overall["tn"] + overall["fn"] > 0
    assert "delivered_structures" in capsys.readouterr().out
    assert auc([(0.9, True), (0.1, False), (0.5, False)]) == 1.0
    assert auc([(0.5, True), (0.5, False)]) == 0.5
    assert auc([(0.5, False)]) is None


def test_finding_pooling_refuses_a_model_without_finding_head(trained_runs, generated_set, tmp_path, capsys):
    from model_export.evaluation.finding_pooling import main as pooling_main

    with pytest.raises(SystemExit) as exit_info:
        pooling_main(["--checkpoint", str(trained_runs["unet"]), "--val", str(generated_set),
                      "--test", str(generated_set), "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    assert "no finding head" in capsys.readouterr().err


def test_train_levels_cli_adds_a_level_classifier_that_tune_evaluate_and_export_carry(
        trained_runs, generated_set, tmp_path, capsys):
    import numpy as np
    import torch

    from model_export.data import read_generated_study
    from model_export.model.level_classifier import cropped_levels, load_level_classifier
    from model_export.model.network import load_checkpoint
    from service.infer.level_crops import CroppedLevels
    from service.infer.model import OnnxModel

    levels = tmp_path / "levels.pt"
    assert main(["train-levels", "--checkpoint", str(trained_runs["text_guided"]), "--data", str(generated_set),
                 "--val", str(generated_set), "--out", str(levels), "--steps", "3", "--variants", "1",
                 "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["levels"] > 0 and set(report["val_auc_true_centres"]) == set(report["thresholds"])
    assert (tmp_path / "levels_curves.png").stat().st_size > 1000
    segmenter, ckpt = load_checkpoint(levels)
    classifier = load_level_classifier(ckpt)
    assert classifier is not None and ckpt["finding_combiners"] == {}
    assert ckpt["exclusive_findings"] == [] and report["exclusive_groups"] == []  # too few positives to find any
    # the segmenter is carried unchanged
    original = torch.load(str(trained_runs["text_guided"]), map_location="cpu", weights_only=False)
    assert all(torch.equal(original["model"][k], v) for k, v in ckpt["model"].items())

    tuned = tmp_path / "tuned.pt"
    assert main(["tune-thresholds", "--checkpoint", str(levels), "--data", str(generated_set),
                 "--out", str(tuned)]) == 0
    assert load_level_classifier(torch.load(str(tuned), map_location="cpu", weights_only=False)) is not None

    model_dir = tmp_path / "models" / "levels"
    study_dir = sorted(generated_set.iterdir())[0]
    assert main(["export", "--checkpoint", str(tuned), "--out", str(model_dir), "--parity-study", str(study_dir)]) == 0
    card = json.loads((model_dir / "model.json").read_text())
    assert card["level_classifier"]["crop"] == classifier.cfg.crop.to_dict()
    assert "synthetic" in card["level_classifier"]["trained_on"]["statement"]
    assert card["export_parity"]["onnxruntime_vs_torch"]["level_classifier.onnx"]["logits"] < 2e-3
    assert card["exclusive_findings"] == ckpt["exclusive_findings"]

    # the worker's ONNX path scores the same levels as torch does, through the same crops
    study = read_generated_study(study_dir)
    onnx_model = OnnxModel.load(model_dir)
    prediction = onnx_model.predict(study.t2, study.t1, study.pixel_spacing, grid=study.grid())
    assert isinstance(prediction.finding_maps, CroppedLevels)
    got = prediction.finding_maps.pool(study.labels)
    with torch.no_grad():
        expected = cropped_levels(classifier, segmenter.class_embeddings()[1], study.t2, study.t1, study.grid(),
                                  onnx_model.ontology).pool(study.labels)
    assert sorted(got) == sorted(expected) and len(got) >= 5
    assert max(float(np.abs(got[k] - expected[k]).max()) for k in got) < 1e-3

    out = tmp_path / "evaluation"
    assert main(["evaluate", "--models", str(model_dir), str(tuned), "--names", "onnx", "torch",
                 "--data", str(generated_set), "--out", str(out), "--postprocess"]) == 0
    summary = {m["name"]: m for m in json.loads((out / "evaluation.json").read_text())["models"]}
    assert summary["onnx +post"]["findings"]["overall"] == summary["torch +post"]["findings"]["overall"]


def test_train_levels_cli_refuses_a_model_without_finding_embeddings(trained_runs, generated_set, tmp_path, capsys):
    assert main(["train-levels", "--checkpoint", str(trained_runs["unet"]), "--data", str(generated_set),
                 "--out", str(tmp_path / "x.pt"), "--no-progress"]) == 2
    assert "without finding embeddings" in capsys.readouterr().err
    assert main(["train-levels", "--checkpoint", str(trained_runs["text_guided"]), "--data", str(generated_set),
                 "--out", str(tmp_path / "x.pt"), "--steps", "0"]) == 2
    assert "--steps must be" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_train_outlines_cli_adds_a_refiner_that_export_evaluate_and_the_onnx_path_carry(
        trained_runs, generated_set, tmp_path, capsys):
    import numpy as np
    import torch

    from model_export.data import read_generated_study
    from model_export.model.network import load_checkpoint
    from model_export.model.outline_refiner import load_outline_refiner, torch_outline_refiner
    from service.infer.model import OnnxModel

    refiner = tmp_path / "refiner.pt"
    assert main(["train-outlines", "--data", str(generated_set), "--val", str(generated_set), "--out", str(refiner),
                 "--steps", "3", "--batch", "4", "--context-slices", "1", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.0 <= report["val_hint_iou"] <= 1.0 and 0.0 <= report["val_refined_iou"] <= 1.0
    assert (tmp_path / "refiner_curves.png").stat().st_size > 1000
    full = tmp_path / "full.pt"
    assert main(["train-outlines", "--refiner", str(refiner), "--checkpoint", str(trained_runs["text_guided"]),
                 "--into", str(full)]) == 0
    _, ckpt = load_checkpoint(full)
    net = load_outline_refiner(ckpt)
    assert net is not None
    original = torch.load(str(trained_runs["text_guided"]), map_location="cpu", weights_only=False)
    assert all(torch.equal(original["model"][k], v) for k, v in ckpt["model"].items())

    model_dir = tmp_path / "models" / "outlines"
    study_dir = sorted(generated_set.iterdir())[0]
    assert main(["export", "--checkpoint", str(full), "--out", str(model_dir), "--parity-study", str(study_dir)]) == 0
    card = json.loads((model_dir / "model.json").read_text())
    assert card["outline_refiner"]["crop"] == net.cfg.crop.to_dict()
    assert card["outline_refiner"]["crop"]["context_slices"] == 1  # T2 and T1 on three slices: 8 channels
    assert "synthetic" in card["outline_refiner"]["trained_on"]["statement"]
    assert card["export_parity"]["onnxruntime_vs_torch"]["outline_refiner.onnx"]["logits"] < 2e-3

    # the worker's ONNX path redraws the same outlines as torch does
    study = read_generated_study(study_dir)
    onnx_model = OnnxModel.load(model_dir)
    prediction = onnx_model.predict(study.t2, study.t1, study.pixel_spacing, grid=study.grid())
    got = prediction.outline_refiner.refine(study.labels)
    expected = torch_outline_refiner(net, study.t2, study.t1, study.grid(), onnx_model.ontology).refine(study.labels)
    assert (got == expected).mean() > 0.999

    out = tmp_path / "evaluation"
    assert main(["evaluate", "--models", str(model_dir), str(full), "--names", "onnx", "torch",
                 "--data", str(generated_set), "--out", str(out), "--postprocess"]) == 0
    summary = {m["name"]: m for m in json.loads((out / "evaluation.json").read_text())["models"]}
    assert abs(summary["onnx +post"]["miou"] - summary["torch +post"]["miou"]) < 0.01
    assert np.isfinite(summary["onnx +post"]["miou"])


def test_train_outlines_cli_continues_a_refiner_with_its_own_widths_and_crop(generated_set, tmp_path, capsys):
    import torch

    from model_export.model.outline_refiner import CHECKPOINT_KEY

    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    common = ["--data", str(generated_set), "--steps", "2", "--batch", "2", "--no-progress"]
    assert main(["train-outlines", *common, "--out", str(first), "--widths", "4", "8", "--context-slices", "1"]) == 0
    capsys.readouterr()
    assert main(["train-outlines", *common, "--out", str(second), "--init", str(first), "--lr", "1e-3",
                 "--seed", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["continued_from"] == {"file": str(first), "steps": 2, "train_seconds": report["continued_from"][
        "train_seconds"]} and report["lr"] == 1e-3
    entry = torch.load(str(second), map_location="cpu", weights_only=False)[CHECKPOINT_KEY]
    assert entry["config"]["widths"] == [4, 8] and entry["config"]["crop"]["context_slices"] == 1


@pytest.mark.parametrize("args, message", [
    (["--data", "X"], "give --data and --out"),
    (["--refiner", "r.pt"], "--refiner only puts"),
    (["--data", "X", "--out", "o.pt", "--checkpoint", "c.pt"], "--checkpoint and --into go together"),
    (["--data", "X", "--out", "o.pt", "--context-slices", "4"], "--context-slices must be 0..3"),
    (["--data", "X", "--out", "o.pt", "--lr", "0"], "--lr must be in (0, 1]"),
    (["--data", "X", "--out", "o.pt", "--init", "missing.pt"], "--init missing.pt is not a refiner file"),
    (["--data", "X", "--out", "o.pt", "--init", "r.pt", "--widths", "4", "8"], "--init keeps the refiner's own"),
])
def test_train_outlines_cli_names_what_is_missing(args, message, capsys):
    assert main(["train-outlines", *args]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_cli_on_real_case_folders_scores_the_validation_split_with_a_contact_sheet(
        tiny_checkpoint, tmp_path, write_real_case, bodies):
    root = tmp_path / "real"
    for name in ("vb2/case01", "vb2/case02"):
        write_real_case(root / name, bodies([2, 3, 4], shape=(4, 64, 64)))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"validation": ["vb2/case02"]}))
    out = tmp_path / "eval"
    assert main(["evaluate", "--models", str(tiny_checkpoint), "--names", "tiny", "--data", str(root),
                 "--out", str(out), "--real-split", str(split)]) == 0
    summary = json.loads((out / "real_evaluation.json").read_text())
    assert [m["output"] for m in summary["models"]] == ["delivered", "raw"]
    assert [c["name"] for c in summary["models"][0]["per_case"]] == ["vb2/case02"]
    assert summary["models"][0]["per_case"][0]["bodies"] == 3
    assert (out / "real_contact_sheet_tiny.png").stat().st_size > 1000
