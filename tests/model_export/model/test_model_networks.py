"""Every model runs forward with the right shapes and finite outputs; the fusion head is class-count agnostic."""

from __future__ import annotations

import pytest
import torch

from model_export.configs import get_config
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
        assert out["finding_pixel_logits"].shape == (3, len(DEFAULT_ONTOLOGY.findings), 32, 32)
        assert torch.isfinite(out["finding_pixel_logits"]).all()


def test_image_encoder_features_come_out_at_stride_two():
    encoder = ImageEncoder("pico-mini", decoder_width=16, out_dim=16)
    features, pooled = encoder(torch.rand(2, 2, 96, 64))
    assert features.shape == (2, 16, 48, 32)
    assert pooled.shape == (2, encoder.pooled_dim)


def test_fusion_head_follows_the_number_of_class_embeddings_it_is_given():
    head = FusionHead(feat_dim=16, embed_dim=24, pooled_dim=32)
    features, pooled = torch.rand(2, 16, 20, 20), torch.rand(2, 32)
    for k in (3, 19, 25):
        assert head.segment(features, pooled, torch.rand(k, 24)).shape == (2, k + 1, 20, 20)
    labels, class_mass, finding_mass, _, _ = FusionExport(head)(features, pooled, torch.rand(7, 24),
                                                             torch.rand(4, 24), torch.zeros(1, 1, 50, 30))
    assert labels.shape == (2, 50, 30) and labels.dtype == torch.uint8
    assert int(labels.max()) <= 7
    assert class_mass.shape == (2, 7) and finding_mass.shape == (2, 7, 4)


def test_text_guided_class_embeddings_depend_on_the_prompt_text(tmp_path):
    model = build_model(get_config("tiny"), DEFAULT_ONTOLOGY, work_dir=tmp_path)
    structures, findings = model.class_embeddings()
    assert structures.shape[0] == 19 and findings.shape[0] == 5
    assert torch.allclose(structures.norm(dim=1), torch.ones(19), atol=1e-5)
    # different prompts give different embeddings: the text, not the position, identifies a class
    assert not torch.allclose(structures[0], structures[1])
