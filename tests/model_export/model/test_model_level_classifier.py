"""The level classifier: a level's logit is its best slice's, any finding count works, and a short run on
crops that show a finding lowers the loss and ranks them first."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model_export.model.level_classifier import LevelClassifier, LevelClassifierConfig  # noqa: E402
from model_export.training.level_training import (  # noqa: E402
    LevelSamples,
    exclusive_groups,
    group_loss,
    level_logits,
    positive_weights,
    train_level_classifier,
)
from service.infer.level_crops import CropSpec  # noqa: E402

SMALL = LevelClassifierConfig(widths=(8, 16), embed_dim=16, crop=CropSpec(size_mm=32.0, pixels=16, slices=3))


def test_a_levels_logit_is_the_maximum_over_its_slices():
    torch.manual_seed(0)
    model = LevelClassifier(SMALL).eval()
    crops, findings = torch.rand(2, 3, 2, 16, 16), torch.randn(5, 16)
    with torch.no_grad():
        together = model(crops, findings)
        apart = torch.stack([model(crops[:, k:k + 1], findings) for k in range(3)]).amax(dim=0)
    assert together.shape == (2, 5)
    assert torch.allclose(together, apart, atol=1e-5)


@pytest.mark.parametrize("findings", [1, 2, 7])
def test_the_finding_count_comes_from_the_embeddings(findings):
    model = LevelClassifier(SMALL).eval()
    with torch.no_grad():
        logits = model(torch.rand(4, 2, 2, 16, 16), torch.randn(findings, 16))
    assert logits.shape == (4, findings) and torch.isfinite(logits).all()


def _blob_samples(n: int, seed: int) -> LevelSamples:
    """Noise crops; finding 0 is a bright blob on one slice, finding 1 is never stated."""
    rng = np.random.default_rng(seed)
    crops = rng.normal(0.3, 0.1, (n, 2, 3, 2, 16, 16)).astype(np.float32)
    targets = np.zeros((n, 2), np.float32)
    targets[: n // 2, 0] = 1.0
    for i in range(n // 2):
        crops[i, :, rng.integers(0, 3), :, 6:10, 9:13] += 1.0
    known = np.zeros((n, 2), bool)
    known[:, 0] = True
    return LevelSamples(crops.astype(np.float16), targets, known, ["case"] * n)


def test_a_short_run_lowers_the_loss_and_ranks_the_finding_first():
    train, val = _blob_samples(48, 0), _blob_samples(16, 1)
    findings = torch.nn.functional.normalize(torch.randn(2, 16), dim=1)
    model, history = train_level_classifier(train, val, findings, SMALL, ["blob", "unstated"], steps=60, batch=16,
                                            validate_every=60, progress=False)
    first, last = np.mean([h["loss"] for h in history[:5]]), np.mean([h["loss"] for h in history[-5:]])
    assert last < 0.5 * first
    assert history[-1]["val_auc"]["blob"] > 0.9 and history[-1]["val_auc"]["unstated"] is None
    logits = level_logits(model, val.crops[:, 0], findings)
    assert logits[:8, 0].mean() > logits[8:, 0].mean()


def test_rare_findings_weigh_more_but_at_most_the_cap():
    samples = _blob_samples(40, 0)
    samples.targets[:, 0] = 0.0
    samples.targets[:1, 0] = 1.0  # 1 positive, 39 negatives
    weights = positive_weights(samples, cap=10.0)
    assert weights[0] == pytest.approx(np.sqrt(10.0))


def test_a_classifier_saved_before_the_text_projection_loads_without_one():
    old = {**SMALL.to_dict()}
    del old["text_projection"]
    cfg = LevelClassifierConfig.from_dict(old)
    assert cfg.text_projection is False
    before = LevelClassifier(cfg)
    assert "text_project.weight" not in before.state_dict()
    LevelClassifier(LevelClassifierConfig.from_dict(old)).load_state_dict(before.state_dict())
    now = LevelClassifier(SMALL)  # the map starts as the identity: the embeddings score as they are
    assert torch.equal(now.text_project(torch.eye(16)), torch.eye(16))


def _stated(targets: list[list[int]], repeat: int) -> LevelSamples:
    """Levels stating all findings, each row of ``targets`` repeated."""
    t = np.repeat(np.array(targets, np.float32), repeat, axis=0)
    return LevelSamples(np.zeros((len(t), 1, 1, 2, 2, 2), np.float16), t, np.ones(t.shape, bool), ["case"] * len(t))


def test_findings_that_never_share_a_level_form_an_exclusive_group():
    # bulging, protrusion, extrusion one at a time; a node now and then beside a protrusion
    samples = _stated([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]], 25)
    keys = ["bulging", "protrusion", "extrusion", "node"]
    assert exclusive_groups(samples, keys) == [["bulging", "protrusion", "extrusion"]]


def test_rare_or_unstated_findings_are_never_grouped():
    samples = _stated([[1, 0, 0], [0, 1, 0], [0, 0, 0]], 10)
    samples.targets[:5, 2] = 1.0  # extrusion at 5 bulging levels: together, so not exclusive anyway
    assert exclusive_groups(samples, ["bulging", "protrusion", "extrusion"], min_positives=20) == []
    assert exclusive_groups(samples, ["bulging", "protrusion", "extrusion"], min_positives=10) == [
        ["bulging", "protrusion"]]
    samples.known[:, 1] = False  # protrusion never stated: no evidence either way
    assert exclusive_groups(samples, ["bulging", "protrusion", "extrusion"], min_positives=10) == []


def test_the_group_loss_rewards_the_stated_member_over_its_rivals():
    targets = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    known = torch.ones(2, 4, dtype=torch.bool)
    right = torch.tensor([[-3.0, 3.0, -3.0, 0.0], [-3.0, -3.0, -3.0, 0.0]])
    rival = torch.tensor([[-3.0, 3.0, 3.0, 0.0], [-3.0, -3.0, -3.0, 0.0]])  # extrusion as sure as protrusion
    assert group_loss(right, targets, known, [[0, 1, 2]]) < 0.1
    assert group_loss(rival, targets, known, [[0, 1, 2]]) > 0.3
    # the node (index 3) is outside the group: its logit changes nothing
    assert group_loss(right, targets, known, [[0, 1, 2]]) == group_loss(right + torch.tensor([0, 0, 0, 9.0]),
                                                                         targets, known, [[0, 1, 2]])
    unstated = known.clone()
    unstated[:, 2] = False  # a level that does not state every member is left out
    assert group_loss(rival, targets, unstated, [[0, 1, 2]]) == 0.0
