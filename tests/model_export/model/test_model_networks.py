"""Every model runs forward with the right shapes and finite outputs; the fusion head is class-count agnostic."""

from __future__ import annotations

import pytest
import torch

from model_export.configs import RunConfig, get_config
from model_export.model.fusion import FusionHead
from model_export.model.image_encoder import ImageEncoder
from model_export.model.network import FusionExport, build_model
from service.ontology import DEFAULT_ONTOLOGY


@pytest.mark.parametrize("kind", ["text_guided", "visual_only", "unet"])
def test_every_model_gives_finite_logits_for_all_classes_at_input_size(kind, tmp_path):
    torch.manual_seed(0)
    model = build_model(get_config("tiny").with_kind(kind), DEFAULT_ONTOLOGY, work_dir=tmp_path)
    out = model(torch.rand(3, 2, 64, 64))
    assert out["logits"].shape == (3, DEFAULT_ONTOLOGY.num_classes, 64, 64)
    assert torch.isfinite(out["logits"]).all()
    if kind != "unet":
        assert out["finding_pixel_logits"].shape == (3, len(DEFAULT_ONTOLOGY.findings), 64, 64)
        assert torch.isfinite(out["finding_pixel_logits"]).all()


def test_image_encoder_features_come_out_at_full_resolution():
    encoder = ImageEncoder("pico-mini", decoder_width=16, out_dim=16)
    features, pooled = encoder(torch.rand(2, 2, 96, 64))
    assert features.shape == (2, 16, 96, 64)
    assert pooled.shape == (2, encoder.pooled_dim)


def test_fusion_head_follows_the_number_of_class_embeddings_it_is_given():
    head = FusionHead(feat_dim=16, embed_dim=24, pooled_dim=32)
    features, pooled = torch.rand(2, 16, 20, 20), torch.rand(2, 32)
    for k in (3, 19, 25):
        assert head.segment(features, pooled, torch.rand(k, 24)).shape == (2, k + 1, 20, 20)
    assert head.segment(torch.rand(1, 16, 21, 17), pooled[:1], torch.rand(3, 24)).shape == (1, 4, 21, 17)
    labels, class_mass, finding_mass, _, _ = FusionExport(head)(features, pooled, torch.rand(7, 24),
                                                             torch.rand(4, 24), torch.zeros(1, 1, 50, 30))
    assert labels.shape == (2, 50, 30) and labels.dtype == torch.uint8
    assert int(labels.max()) <= 7
    assert class_mass.shape == (2, 7) and finding_mass.shape == (2, 7, 4)


def test_fusion_head_full_resolution_map_changes_single_pixels():
    """The coarse head sees 2x2 averages; the generated linear map must reach each full-resolution pixel."""
    torch.manual_seed(0)
    head = FusionHead(feat_dim=8, embed_dim=12, pooled_dim=16)
    with torch.no_grad():  # every class: a silent three-layer head, and all-ones full-resolution weights
        head.controller[-1].weight.zero_()
        head.controller[-1].bias.zero_()
        head.controller[-1].bias[-8:] = 1.0
    features, pooled, embeddings = torch.zeros(1, 8, 8, 8), torch.rand(1, 16), torch.rand(2, 12)
    base = head.segment(features, pooled, embeddings)
    features[0, :, 3, 4] = 5.0
    delta = (head.segment(features, pooled, embeddings) - base)[0, 1:]
    assert torch.allclose(delta[:, 3, 4], torch.full((2,), 40.0))  # 8 channels x 5.0 x weight 1.0
    delta[:, 3, 4] = 0.0
    assert not delta.any()  # its 2x2 block-mates included


def test_fusion_head_ignores_what_all_class_embeddings_share():
    """Centred embeddings: a component common to every class cannot make the classes' heads alike."""
    torch.manual_seed(0)
    head = FusionHead(feat_dim=8, embed_dim=12, pooled_dim=16)
    features, pooled, embeddings = torch.rand(1, 8, 8, 8), torch.rand(1, 16), torch.rand(4, 12)
    shared = 3.0 * torch.rand(1, 12)
    assert torch.allclose(head.segment(features, pooled, embeddings),
                          head.segment(features, pooled, embeddings + shared), atol=1e-5)
    uncentred = FusionHead(feat_dim=8, embed_dim=12, pooled_dim=16, center_embeddings=False)
    assert not torch.allclose(uncentred.segment(features, pooled, embeddings),
                              uncentred.segment(features, pooled, embeddings + shared), atol=1e-5)


def test_convolutional_finding_branch_gives_finite_logits_on_the_feature_grid_at_odd_sizes():
    head = FusionHead(feat_dim=16, embed_dim=24, pooled_dim=32, finding_conv_layers=3)
    for rows, cols in ((20, 20), (21, 17)):
        logits = head.finding_logits(torch.rand(2, 16, rows, cols), torch.rand(5, 24))
        assert logits.shape == (2, 5, rows, cols)
        assert torch.isfinite(logits).all()


def test_finding_branch_reads_a_neighbourhood_only_with_its_convolutions():
    torch.manual_seed(0)
    features = torch.zeros(1, 16, 16, 16)
    poked = features.clone()
    poked[0, :, 8, 8] = 1.0
    for layers, reaches_neighbours in ((0, False), (2, True)):
        head = FusionHead(feat_dim=16, embed_dim=24, pooled_dim=32, finding_conv_layers=layers)
        queries = torch.rand(2, 24)
        change = (head.finding_logits(poked, queries) - head.finding_logits(features, queries)).abs()[0, 0]
        assert change[8, 8] > 0
        assert bool(change[8, 12] > 0) is reaches_neighbours  # four pixels away


def test_checkpoints_from_before_the_finding_branch_load_with_the_linear_projection():
    data = get_config("cpu-hour").to_dict()
    del data["model"]["finding_conv_layers"], data["model"]["finding_pool_dilation"]
    model = RunConfig.from_dict(data).model
    assert model.finding_conv_layers == 0 and model.finding_pool_dilation == 0


def test_checkpoints_from_before_centring_load_without_it():
    run = get_config("tiny")
    data = run.to_dict()
    del data["model"]["center_class_embeddings"]
    assert RunConfig.from_dict(data).model.center_class_embeddings is False
    assert RunConfig.from_dict(run.to_dict()).model.center_class_embeddings is True


def test_text_guided_class_embeddings_depend_on_the_prompt_text(tmp_path):
    model = build_model(get_config("tiny"), DEFAULT_ONTOLOGY, work_dir=tmp_path)
    structures, findings = model.class_embeddings()
    assert structures.shape[0] == 19 and findings.shape[0] == 5
    assert torch.allclose(structures.norm(dim=1), torch.ones(19), atol=1e-5)
    # different prompts give different embeddings: the text, not the position, identifies a class
    assert not torch.allclose(structures[0], structures[1])
