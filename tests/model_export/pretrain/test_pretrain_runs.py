"""Pretraining runs end to end, writes its artefacts, and fine-tuning starts from what it wrote."""

from __future__ import annotations

import json

import pytest
import torch

from model_export.configs import get_config
from model_export.model.network import build_model
from model_export.pretrain.init import init_image_encoder, init_text_encoder, pretrained_initialiser
from service.cli import main
from service.errors import ConfigError
from service.ontology import DEFAULT_ONTOLOGY


def test_image_pretraining_writes_checkpoint_reconstructions_and_curves(tiny_image_checkpoint):
    run_dir = tiny_image_checkpoint.parent
    ckpt = torch.load(tiny_image_checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["state"]["step"] == 3 and ckpt["config"]["mask_ratio"] == 0.6
    assert len(ckpt["provenance"]["studies"]) == 3
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in ckpt["state"]["history"])
    pngs = sorted((run_dir / "reconstructions").glob("step_*.png"))
    assert [p.name for p in pngs] == ["step_000003.png"]
    assert all(p.stat().st_size > 5000 for p in pngs)
    assert (run_dir / "curves.png").is_file() and (run_dir / "last.pt").is_file()


def test_fine_tuning_model_starts_from_both_pretrained_encoders(tiny_image_checkpoint, tiny_text_checkpoint, tmp_path):
    model = build_model(get_config("tiny"), DEFAULT_ONTOLOGY, work_dir=tmp_path)
    before = model.class_embeddings()[0].detach().clone()
    info = pretrained_initialiser(tiny_image_checkpoint, tiny_text_checkpoint)(model)
    image_ckpt = torch.load(tiny_image_checkpoint, map_location="cpu", weights_only=False)
    for name, value in model.image_encoder.backbone.state_dict().items():
        assert torch.equal(value, image_ckpt["backbone"][name]), name
    text_ckpt = torch.load(tiny_text_checkpoint, map_location="cpu", weights_only=False)
    for name, value in model.text_encoder.state_dict().items():
        assert torch.equal(value, text_ckpt["text_encoder"][name]), name
    assert not torch.allclose(model.class_embeddings()[0], before)  # the prompt cache was refreshed
    assert info["image"]["steps"] == 3 and info["text"]["objective"] == "clip"


def test_pretrained_checkpoints_that_do_not_fit_are_refused_by_name(tiny_image_checkpoint, tiny_text_checkpoint,
                                                                      tmp_path):
    from model_export.configs import RunConfig

    tiny = get_config("tiny")
    bigger = RunConfig.from_dict({**tiny.to_dict(), "model": {**tiny.to_dict()["model"], "encoder": "atto"}})
    with pytest.raises(ConfigError, match=str(tiny_image_checkpoint)):
        init_image_encoder(build_model(bigger, DEFAULT_ONTOLOGY, work_dir=tmp_path), tiny_image_checkpoint)
    unet = build_model(tiny.with_kind("unet"), DEFAULT_ONTOLOGY)
    with pytest.raises(ConfigError, match="no ConvNeXt V2 image encoder"):
        init_image_encoder(unet, tiny_image_checkpoint)
    visual = build_model(tiny.with_kind("visual_only"), DEFAULT_ONTOLOGY)
    with pytest.raises(ConfigError, match="text encoder"):
        init_text_encoder(visual, tiny_text_checkpoint)
    with pytest.raises(ConfigError, match="not a clip-text-encoder checkpoint"):
        init_text_encoder(build_model(tiny, DEFAULT_ONTOLOGY, work_dir=tmp_path), tiny_image_checkpoint)


def test_train_cli_records_the_pretrained_starting_points(report_studies, tiny_image_checkpoint,
                                                          tiny_text_checkpoint, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(report_studies), "--config", "tiny", "--steps", "1", "--out", str(out),
                 "--init-image", str(tiny_image_checkpoint), "--init-text", str(tiny_text_checkpoint),
                 "--no-progress"]) == 0
    ckpt = torch.load(out / "final.pt", map_location="cpu", weights_only=False)
    initialised = ckpt["provenance"]["initialised_from"]
    assert initialised["image"]["checkpoint"] == str(tiny_image_checkpoint)
    assert initialised["text"]["checkpoint"] == str(tiny_text_checkpoint)


def test_text_pretraining_writes_similarity_png_hf_model_and_checkpoint(tiny_text_checkpoint):
    run_dir = tiny_text_checkpoint.parent
    similarity = json.loads((run_dir / "similarity.json").read_text())
    assert len(similarity["names"]) == 24 and similarity["names"][11] == "L4/L5 disc"
    assert len(similarity["matrices"]["after"]) == 24
    assert (run_dir / "similarity.png").stat().st_size > 20000
    assert (run_dir / "text_model" / "config.json").is_file() and (run_dir / "text_model" / "tokenizer.json").is_file()
    ckpt = torch.load(tiny_text_checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["provenance"]["reports"] == 3 and ckpt["image_head"] is not None
    assert ckpt["provenance"]["init_image"] is not None


def test_pretrain_cli_image_and_text_only_run_on_generated_studies(report_studies, tmp_path, capsys):
    image_out = tmp_path / "image"
    assert main(["pretrain", "image", "--data", str(report_studies), "--out", str(image_out), "--config", "tiny",
                 "--steps", "1", "--batch-size", "2", "--no-progress"]) == 0
    assert (image_out / "image_encoder.pt").is_file()
    reports = tmp_path / "reports.jsonl"
    reports.write_text("\n".join(json.dumps({"StudyInstanceUID": f"1.2.3.{i}", "report": text}) for i, text in
                                 enumerate(["L4/L5: disc protrusion.", "Normal study.", "L5/S1: disc bulging."])))
    text_out = tmp_path / "text"
    assert main(["pretrain", "text", "--text-only", "--reports", str(reports), "--out", str(text_out),
                 "--config", "tiny", "--steps", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "triplet accuracy" in printed and str(text_out / "text_encoder.pt") in printed
    ckpt = torch.load(text_out / "text_encoder.pt", map_location="cpu", weights_only=False)
    assert ckpt["objective"] == "simcse" and ckpt["provenance"]["reports"] == 3


def test_pretrain_cli_names_what_is_wrong(tmp_path, capsys):
    assert main(["pretrain", "image", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                 "--config", "tiny"]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    bad = tmp_path / "reports.csv"
    bad.write_text("uid,comment\n1.2.3,hello\n")
    assert main(["pretrain", "text", "--text-only", "--reports", str(bad), "--out", str(tmp_path / "t"),
                 "--config", "tiny"]) == 2
    assert "reports.csv, row 2" in capsys.readouterr().err
