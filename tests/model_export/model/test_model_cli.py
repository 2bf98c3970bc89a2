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
