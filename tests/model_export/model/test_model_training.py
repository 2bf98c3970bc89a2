"""A tiny training run lowers the loss, writes its artefacts, and resumes where it stopped."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from model_export.configs import get_config
from model_export.data import load_cases
from model_export.model.losses import PartialDiceCELoss
from model_export.model.network import build_model, load_checkpoint
from model_export.training.loop import lr_at, train
from model_export.training.prepare import prepare_case
from service.errors import ConfigError
from service.ontology import DEFAULT_ONTOLOGY


def _loss_on_fixed_batch(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        return float(PartialDiceCELoss()(model(batch.image)["logits"], batch.target, batch.labelled))


def test_tiny_training_run_lowers_the_segmentation_loss(tiny_cases, tmp_path):
    run = get_config("tiny")
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, steps=25, validation_cases=0))
    batch = prepare_case(load_cases(tiny_cases)[0], run.model.view(), DEFAULT_ONTOLOGY)
    torch.manual_seed(run.train.seed)
    before = _loss_on_fixed_batch(build_model(run, DEFAULT_ONTOLOGY, work_dir=tmp_path), batch)
    model, _ = load_checkpoint(train(tiny_cases, run, tmp_path, progress=False))
    after = _loss_on_fixed_batch(model, batch)
    assert after < before - 0.05, (before, after)


def test_training_writes_checkpoints_curves_history_and_tuned_thresholds(tiny_checkpoint):
    run_dir = tiny_checkpoint.parent
    for name in ("final.pt", "last.pt", "curves.png", "history.json"):
        assert (run_dir / name).is_file(), name
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, get_config("tiny").train.steps + 1))
    assert any("val_dice" in h for h in history)
    ckpt = torch.load(tiny_checkpoint, weights_only=False)
    assert set(ckpt["finding_thresholds"]) == {f.key for f in DEFAULT_ONTOLOGY.findings}
    assert ckpt["provenance"]["validation_cases"] == ["case2"]


def test_loading_a_checkpoint_of_the_old_stride_two_format_says_to_retrain(tiny_checkpoint, tmp_path):
    ckpt = torch.load(tiny_checkpoint, weights_only=False)
    del ckpt["format"]  # what format-1 (FPN decoder) checkpoints look like
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    with pytest.raises(ConfigError, match=r"old\.pt has format 1.*retrain"):
        load_checkpoint(old)


def test_resume_continues_from_the_last_checkpoint(tiny_cases, tmp_path):
    run = get_config("tiny")
    short = dataclasses.replace(run, train=dataclasses.replace(run.train, steps=4, validation_cases=0))
    train(tiny_cases, short, tmp_path, progress=False)
    longer = dataclasses.replace(short, train=dataclasses.replace(short.train, steps=6))
    train(tiny_cases, longer, tmp_path, resume=True, progress=False)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]


def test_learning_rate_anneals_to_zero_when_the_time_budget_runs_out_before_the_steps():
    run = get_config("cpu-hour")
    budget = run.train.time_budget_s
    warm = run.train.warmup_steps
    assert lr_at(warm, run, 0.0) == pytest.approx(run.train.lr, rel=1e-3)
    assert lr_at(warm, run, budget / 2) == pytest.approx(run.train.lr / 2, rel=1e-3)
    assert lr_at(warm, run, budget) == pytest.approx(0.0, abs=1e-12)


def test_learning_rate_without_a_budget_follows_the_steps():
    run = dataclasses.replace(get_config("cpu-hour"), train=dataclasses.replace(
        get_config("cpu-hour").train, time_budget_s=None, steps=1100, warmup_steps=100))
    assert lr_at(0, run) == pytest.approx(run.train.lr / 100)
    assert lr_at(600, run, budget_used_s=1e9) == pytest.approx(run.train.lr / 2, rel=1e-3)
    assert lr_at(1100, run) == pytest.approx(0.0, abs=1e-12)


def test_band_view_case_shows_the_spine_larger_than_the_square_survey(tiny_cases):
    from service.infer.input_view import InputView

    case = load_cases(tiny_cases)[0]
    batch = prepare_case(case, InputView((64, 64), (96, 64), 0.06), DEFAULT_ONTOLOGY)
    assert batch.band_image is not None and batch.band_target is not None
    assert batch.band_image.shape == (case.labels.shape[0], 2, 96, 64)
    assert batch.band_target.shape == (case.labels.shape[0], 96, 64)
    survey_share = float((batch.target > 0).float().mean())
    band_share = float((batch.band_target > 0).float().mean())
    assert band_share > 1.3 * survey_share, (survey_share, band_share)
    assert set(batch.band_target.unique().tolist()) == set(batch.target.unique().tolist())


def test_a_training_step_on_the_band_view_gives_finite_losses(tiny_cases, tmp_path):
    from model_export.training.augment import StepAugment
    from model_export.training.loop import training_step

    run = get_config("tiny")
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, band_size=(96, 64)))
    batch = prepare_case(load_cases(tiny_cases)[0], run.model.view(), DEFAULT_ONTOLOGY)
    model = build_model(run, DEFAULT_ONTOLOGY, work_dir=tmp_path)
    losses = training_step(model, batch, slice(0, 4), StepAugment(0, 0.25), PartialDiceCELoss(), run, band=True)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()


@pytest.fixture
def real_root(tmp_path, write_real_case, bodies):
    """Two body-only cases of known level and one of unknown level, the bodies 28 mm from the front."""
    import numpy as np

    root = tmp_path / "real"
    known, ranked = (np.roll(bodies(v, shape=(4, 64, 64)), 30, axis=2) for v in ([2, 3, 4], [101, 102, 103]))
    write_real_case(root / "vb2" / "case01", known)
    write_real_case(root / "vb2" / "case02", known)
    write_real_case(root / "vb1" / "case03", ranked)
    return root


def test_a_body_only_case_trains_on_its_bodies_and_the_tissue_in_front_and_nothing_else(real_root):
    from model_export.model.losses import CERTAIN_BACKGROUND, IGNORE_INDEX
    from model_export.real_cases import read_real_case

    case = read_real_case(real_root / "vb2" / "case01")
    view = dataclasses.replace(get_config("tiny").model, input_size=64, band_size=(64, 32)).view()
    batch = prepare_case(case, view, DEFAULT_ONTOLOGY)
    values = set(torch.unique(batch.target).tolist())
    assert values == {2, 3, 4, CERTAIN_BACKGROUND, IGNORE_INDEX}
    assert batch.labelled.nonzero().flatten().tolist() == [0, 2, 3, 4]
    assert batch.rank_count == 0
    assert (batch.target[1, 57, 53:] == IGNORE_INDEX).all()  # behind a body: its arch is unknown
    assert (batch.target[1, 57, :20] == CERTAIN_BACKGROUND).all()  # over 20 mm in front of it: background
    ranked = prepare_case(read_real_case(real_root / "vb1" / "case03"), view, DEFAULT_ONTOLOGY)
    assert ranked.rank_count == 3
    assert ranked.labelled[1:11].all() and not ranked.labelled[11:].any()  # sacrum and vertebrae in play


def test_training_mixes_real_cases_leaves_the_validation_split_out_and_records_them(tiny_cases, real_root,
                                                                                   tmp_path):
    root = real_root
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"validation": ["vb2/case02"]}))
    run = get_config("tiny")
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, steps=6, real_share=0.5))
    _, ckpt = load_checkpoint(train(tiny_cases, run, tmp_path / "run", progress=False, real_dir=root,
                                    real_split=split))
    assert ckpt["provenance"]["real_training_cases"] == ["vb1/case03", "vb2/case01"]
    assert ckpt["run"]["train"]["real_share"] == 0.5
    assert all(torch.isfinite(torch.tensor(h["segmentation"])) for h in ckpt["state"]["history"])


def test_real_cases_without_a_share_are_refused(tiny_cases, real_root, tmp_path):
    with pytest.raises(ConfigError, match="real_share"):
        train(tiny_cases, get_config("tiny"), tmp_path / "run", progress=False, real_dir=real_root)
