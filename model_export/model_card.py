"""The model card (``model.json``) an export writes: what the service needs to run the graphs, and what a
reader needs to trust them (training data and statement, metrics, versions, export parity)."""

from __future__ import annotations

import platform
from typing import Any

import torch

from model_export.configs import RunConfig
from model_export.model.level_classifier import CHECKPOINT_KEY
from model_export.model.outline_refiner import CHECKPOINT_KEY as REFINER_KEY
from model_export.real_cases import data_sources
from service.infer.model import DEFAULT_NORMALISATION, LEVEL_CLASSIFIER_FILE, OUTLINE_REFINER_FILE
from service.ontology import Ontology

OPSET = 17
SYNTHETIC_STATEMENT = ("trained on synthetic data only: SynthSeg-style generated lumbar MRI studies "
                       "(label maps from SPIDER masks and procedural spines, randomised T1/T2 contrast); "
                       "no real patient images were used for training")


def build_card(ckpt: dict[str, Any], parity: dict[str, Any], agreement: dict[str, Any], name: str,
               version: str, metrics: dict[str, Any] | None, embeddings: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import transformers

    run = ckpt["run"]
    ontology = Ontology.from_dict(ckpt["ontology"])
    view = RunConfig.from_dict(run).model.view()
    return {
        "name": name,
        "version": version,
        "architecture": {"kind": run["model"]["kind"], "image_encoder": f"ConvNeXt V2 {run['model']['encoder']}"
                         " + U-Net decoder to full resolution", "text_encoder": "all-MiniLM-L6-v2 (or --text-model) + "
                         "linear projection", "fusion_head": "CLIP-Driven Universal Model style dynamic "
                         "per-class heads (three layers at stride 2 plus a full-resolution linear map)"
                         + ("; structure embeddings centred over the queried classes"
                            if run["model"].get("center_class_embeddings") else "")
                         + (f"; finding branch of {run['model']['finding_conv_layers']} 3x3 convolutions at stride 2"
                            if run["model"].get("finding_conv_layers") else "; linear finding projection")
                         + "; finding logits pooled per structure as log-mean-exp",
                         "embed_dim": run["model"]["embed_dim"]},
        "ontology": ontology.to_dict(),
        "input": {**view.to_card(), "channels": ["T2", "T1"],
                  "resize": "antialiased linear (triangle filter), half-pixel centres, per slice",
                  "intensity_normalisation": DEFAULT_NORMALISATION,
                  "grid": "T1 resampled onto the T2 grid by patient geometry (linear) before the call",
                  "spacing": "none: every slice is resized to the input size whatever its spacing",
                  "view": ("a square survey of the whole slice places a spine band box, which the model then "
                           "reads at spine_band.size (service.infer.input_view)" if view.has_band
                           else "the whole slice, zero-padded to a square")},
        "text": {"max_length": run["model"]["text_max_length"],
                 "prompt_aggregation": "mean of the L2-normalised prompt embeddings of a class, re-normalised",
                 "prompts": {s.name: s.prompt_texts() for s in ontology.structures}
                 | {f.key: f.prompt_texts() for f in ontology.findings},
                 **({"embeddings": embeddings} if embeddings else {})},
        "outputs": {"labels": "uint8 argmax on the caller's grid, no post-processing",
                    "finding_probability": "sigmoid(log(sum finding_mass / sum class_mass)) over slices, per raw "
                                           "class",
                    "finding_logits": "per-pixel finding logits on the feature grid; the worker pools them "
                                      "(log-mean-exp) inside each delivered structure and reports that"},
        "finding_pooling": {"method": "log-mean-exp of the clamped pixel logits inside each structure, its "
                                      "mask first widened in the slice plane by dilation_px feature pixels",
                            "dilation_px": int(run["model"].get("finding_pool_dilation", 0))},
        "finding_thresholds": {f.key: float(ckpt.get("finding_thresholds", {}).get(f.key, 0.5))
                               for f in ontology.findings},
        "finding_combiners": dict(ckpt.get("finding_combiners", {})),
        "exclusive_findings": [list(g) for g in ckpt.get("exclusive_findings", [])],
        **level_classifier_card(ckpt),
        **outline_refiner_card(ckpt),
        "training": {"statement": training_statement(ckpt.get("provenance", {})), "config": run,
                     "data_sources": data_sources(ckpt.get("provenance", {})), **ckpt.get("provenance", {})},
        "metrics": metrics or {},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version(), "opset": OPSET},
        "export_parity": {"onnxruntime_vs_torch": parity, "label_map": agreement},
    }


def training_statement(provenance: dict[str, Any]) -> str:
    """What trained the segmenter, in one sentence for the card: synthetic only, or real scans beside it."""
    real = provenance.get("real_training_cases") or []
    if not real:
        return SYNTHETIC_STATEMENT
    return (f"trained partly on synthetic data: generated lumbar MRI studies (label maps from SPIDER masks and "
            f"procedural spines) mixed with {len(real)} real sagittal lumbar scans with partial labels "
            f"(vertebral bodies), {provenance.get('real_share', 0):.0%} of the steps; see data_sources")


def level_classifier_card(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The card's ``level_classifier`` section, or nothing for a checkpoint without one."""
    return _second_network_card(
        ckpt, CHECKPOINT_KEY, "level_classifier", LEVEL_CLASSIFIER_FILE,
        "findings of each delivered disc and vertebra from crops around its centre (columns posterior, rows "
        "inferior, the slices nearest its centre), each slice scored against the finding embeddings; a level's "
        "logit is the maximum over its slices. It replaces the pooled finding maps (service.infer.level_crops)")


def outline_refiner_card(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The card's ``outline_refiner`` section, or nothing for a checkpoint without one."""
    return _second_network_card(
        ckpt, REFINER_KEY, "outline_refiner", OUTLINE_REFINER_FILE,
        "each delivered disc and vertebra redrawn slice by slice from a crop around its box (columns "
        "posterior, rows inferior): T2, T1, its delivered mask and the other structures' mask in, its mask "
        "logits out; the most confident structure over 0.5 takes a pixel (service.infer.outline_crops)")


def _second_network_card(ckpt: dict[str, Any], key: str, section: str, graph: str, description: str
                         ) -> dict[str, Any]:
    entry = ckpt.get(key)
    if entry is None:
        return {}
    return {section: {"graph": graph, "crop": entry["config"]["crop"], "description": description,
                      "trained_on": {"statement": SYNTHETIC_STATEMENT, **entry.get("provenance", {})}}}


