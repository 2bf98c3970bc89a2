"""Export a trained text-guided checkpoint to a model directory, and check the export against torch.

The check has three parts, all of which must pass or the export fails with ``ModelExportError``:
the ONNX checker on each graph; ONNX Runtime against torch on the same inputs, at the shapes used for
export and at different batch, height, width and class counts (max abs difference per output against a
tolerance); and the service's ONNX-only ``OnnxModel.predict`` against torch ``predict_volume`` on a
generated study (share of identical voxels of the label map). A checkpoint with a level classifier
(``lumbar-ai train-levels``) also gets ``level_classifier.onnx``, checked the same way, and a
``level_classifier`` section in the card; one with an outline refiner (``lumbar-ai train-outlines``)
gets ``outline_refiner.onnx`` and an ``outline_refiner`` section.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model_export.model.level_classifier import LevelClassifier, load_level_classifier
from model_export.model.network import FusionExport, LumbarSegmenter, load_checkpoint
from model_export.model.outline_refiner import OutlineRefinerNet, load_outline_refiner
from model_export.model.predict import predict_volume
from model_export.model.text_encoder import tokenize
from model_export.model_card import OPSET, build_card
from model_export.onnx_weights import store_float16
from service.errors import ModelExportError
from service.infer.model import LEVEL_CLASSIFIER_FILE, OUTLINE_REFINER_FILE, OnnxModel
from service.infer.prompt_embeddings import TEXT_ENCODER_FILE, TOKENIZER_FILE, write_prompt_embeddings
from service.ontology import Ontology

log = logging.getLogger(__name__)
TOLERANCE = 2e-3
"""Max abs difference of an output from torch, with float32 weights."""
FLOAT16_TOLERANCE = 3e-2
"""The same with weights stored as float16 (model_export.onnx_weights): their rounding, not the runtime."""
SUM_OUTPUTS = ("class_mass", "finding_mass")
"""Per-slice sums of up to h*w terms of exp(logit <= 12): their float32 rounding grows with their size, so
they are compared relative to their largest value (reported as ``<name>_relative``)."""
MIN_LABEL_AGREEMENT = 0.999

class _ImageEncoderGraph(nn.Module):
    def __init__(self, model: LumbarSegmenter) -> None:
        super().__init__()
        self.encoder = model.image_encoder

    def forward(self, image: torch.Tensor):
        return self.encoder(image)


class _TextEncoderGraph(nn.Module):
    def __init__(self, model: LumbarSegmenter) -> None:
        super().__init__()
        self.encoder = model.text_encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], float16: bool) -> None:
    """Write one graph (its weights stored as float16 when asked) and run the ONNX checker on it."""
    module.eval()
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    if float16:
        store_float16(path)
    _check_graph(path)


def tolerance(float16: bool) -> float:
    return FLOAT16_TOLERANCE if float16 else TOLERANCE


def _check_graph(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # the checker raises several unrelated types
        raise ModelExportError(f"ONNX checker rejected {path.name}: {exc}") from exc


def _max_diff(module: nn.Module, path: Path, names: list[str], args: tuple, out_names: list[str]
              ) -> dict[str, float]:
    import onnxruntime as ort

    with torch.no_grad():
        expected = module(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(out_names, {n: a.numpy() for n, a in zip(names, args, strict=True)})
    diffs = {}
    for name, e, g in zip(out_names, expected, got, strict=True):
        e = e.numpy()
        if e.shape != g.shape:
            raise ModelExportError(f"{path.name}: output {name} has shape {g.shape}, torch gives {e.shape}")
        if e.dtype == np.uint8:
            diffs[f"{name}_disagreement"] = float((e != g).mean())
        elif name in SUM_OUTPUTS:
            scale = max(1.0, float(np.abs(e).max())) if e.size else 1.0
            diffs[f"{name}_relative"] = float(np.abs(e.astype(np.float64) - g).max()) / scale if e.size else 0.0
        else:
            diffs[name] = float(np.abs(e.astype(np.float64) - g).max()) if e.size else 0.0
    return diffs


def export_graphs(model: LumbarSegmenter, out_dir: Path, input_size: int, float16: bool = True,
                  with_text_encoder: bool = False) -> dict[str, Any]:
    """Write the image encoder, the fusion head and the prompt embeddings (the text encoder and
    tokenizer.json only when asked); return the parity figures."""
    torch.manual_seed(0)
    structures, findings = (t.detach() for t in model.class_embeddings())
    s = input_size
    image = torch.rand(2, 2, s, s)
    with torch.no_grad():
        features, pooled = model.image_encoder(image)
    ids, mask = tokenize(_tokenizer(model), ["L4/L5 disc", "disc protrusion on lumbar spine MRI"],
                         model.cfg.text_max_length)
    grid = torch.zeros(1, 1, s * 3, s * 2 + 7)
    fusion = FusionExport(model.fusion).eval()
    specs = {
        "image_encoder.onnx": (_ImageEncoderGraph(model), (image,), ["image"], ["features", "pooled"],
                               {"image": {0: "batch", 2: "height", 3: "width"},
                                "features": {0: "batch", 2: "feature_height", 3: "feature_width"},
                                "pooled": {0: "batch"}}),
        "text_encoder.onnx": (_TextEncoderGraph(model), (ids, mask), ["input_ids", "attention_mask"],
                              ["embeddings"], {"input_ids": {0: "texts", 1: "tokens"},
                                               "attention_mask": {0: "texts", 1: "tokens"},
                                               "embeddings": {0: "texts"}}),
        "fusion_head.onnx": (fusion, (features, pooled, structures, findings, grid),
                             ["features", "pooled", "structure_embeddings", "finding_embeddings", "output_grid"],
                             ["labels", "class_mass", "finding_mass", "logits", "finding_logits"],
                             {"features": {0: "batch", 2: "feature_height", 3: "feature_width"},
                              "pooled": {0: "batch"}, "structure_embeddings": {0: "classes"},
                              "finding_embeddings": {0: "findings"},
                              "output_grid": {2: "rows", 3: "cols"},
                              "labels": {0: "batch", 1: "rows", 2: "cols"}, "class_mass": {0: "batch", 1: "classes"},
                              "finding_mass": {0: "batch", 1: "classes", 2: "findings"},
                              "logits": {0: "batch", 1: "classes_with_background", 2: "feature_height",
                                         3: "feature_width"},
                              "finding_logits": {0: "batch", 1: "findings", 2: "feature_height",
                                                 3: "feature_width"}}),
    }
    if not with_text_encoder:
        del specs[TEXT_ENCODER_FILE]
    for stale in (TEXT_ENCODER_FILE, TOKENIZER_FILE):  # a re-export into the same folder must not keep them
        (out_dir / stale).unlink(missing_ok=True)
    for name, (module, args, inputs, outputs, dynamic) in specs.items():
        _export(module, args, out_dir / name, inputs, outputs, dynamic, float16)
    if with_text_encoder:
        (out_dir / TOKENIZER_FILE).write_text(model.tokenizer_json)
    # parity at the export shapes, then at other batch / height / width / class counts
    image2 = torch.rand(3, 2, s + 32, s - 16)
    with torch.no_grad():
        features2, pooled2 = model.image_encoder(image2)
    ids2, mask2 = tokenize(_tokenizer(model), ["T12 vertebra", "Schmorl's node", "a sagittal MR image of the sacrum"],
                           model.cfg.text_max_length)
    cases = {
        "image_encoder.onnx": [(image,), (image2,)],
        "text_encoder.onnx": [(ids, mask), (ids2, mask2)],
        "fusion_head.onnx": [(features, pooled, structures, findings, grid),
                             (features2, pooled2, structures[:7], findings[:3], torch.zeros(1, 1, 97, 131))],
    }
    parity: dict[str, Any] = {"tolerance": tolerance(float16),
                              "weights": "float16, computed in float32" if float16 else "float32"}
    for name, variants in cases.items():
        if name not in specs:
            continue
        module, _, inputs, outputs, _ = specs[name]
        per_variant = [_max_diff(module, out_dir / name, inputs, args, outputs) for args in variants]
        parity[name] = {k: max(d[k] for d in per_variant) for k in per_variant[0]}
        for key, value in parity[name].items():
            limit = 1e-3 if key.endswith("_disagreement") else tolerance(float16)
            if value > limit:
                raise ModelExportError(f"{name}: ONNX Runtime differs from torch on {key}: {value:.3g} > {limit}")
    return parity


def export_level_classifier(classifier: LevelClassifier, findings: torch.Tensor, out_dir: Path,
                            float16: bool = True) -> dict[str, Any]:
    """Write level_classifier.onnx and compare it with torch at two level, slice and finding counts."""
    torch.manual_seed(1)
    crop = classifier.cfg.crop
    crops = torch.rand(3, crop.slices, 2, crop.pixels, crop.pixels)
    path = out_dir / LEVEL_CLASSIFIER_FILE
    names, outputs = ["crops", "finding_embeddings"], ["logits"]
    _export(classifier, (crops, findings), path, names, outputs,
            {"crops": {0: "levels", 1: "slices"}, "finding_embeddings": {0: "findings"},
             "logits": {0: "levels", 1: "findings"}}, float16)
    variants = [(crops, findings), (torch.rand(5, crop.slices + 2, 2, crop.pixels, crop.pixels), findings[:3])]
    diffs = [_max_diff(classifier, path, names, args, outputs)["logits"] for args in variants]
    if max(diffs) > tolerance(float16):
        raise ModelExportError(f"{path.name}: ONNX Runtime differs from torch by {max(diffs):.3g} > "
                               f"{tolerance(float16)}")
    return {"logits": max(diffs)}


def export_outline_refiner(net: OutlineRefinerNet, out_dir: Path, float16: bool = True) -> dict[str, Any]:
    """Write outline_refiner.onnx and compare it with torch at two crop counts."""
    torch.manual_seed(2)
    pixels, channels = net.cfg.crop.pixels, net.cfg.crop.input_channels
    inputs = torch.rand(3, channels, pixels, pixels)
    path = out_dir / OUTLINE_REFINER_FILE
    _export(net, (inputs,), path, ["inputs"], ["logits"], {"inputs": {0: "crops"}, "logits": {0: "crops"}},
            float16)
    variants = [(inputs,), (torch.rand(7, channels, pixels, pixels),)]
    diffs = [_max_diff(net, path, ["inputs"], args, ["logits"])["logits"] for args in variants]
    if max(diffs) > tolerance(float16):
        raise ModelExportError(f"{path.name}: ONNX Runtime differs from torch by {max(diffs):.3g} > "
                               f"{tolerance(float16)}")
    return {"logits": max(diffs)}


def _tokenizer(model: LumbarSegmenter):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(model.tokenizer_json)


def label_map_agreement(model: LumbarSegmenter, model_dir: Path, study: Any) -> dict[str, Any]:
    """Share of identical voxels between OnnxModel.predict and torch predict_volume on one study."""
    onnx_model = OnnxModel.load(model_dir, intra_op_threads=2)
    started = time.perf_counter()
    got = onnx_model.predict(study.t2, study.t1, study.pixel_spacing)
    onnx_s = time.perf_counter() - started
    started = time.perf_counter()
    expected = predict_volume(model, study.t2, study.t1, model.cfg.view())
    torch_s = time.perf_counter() - started
    agreement = float((got.labels == expected.labels).mean())
    probs = expected.finding_probs()
    diffs = [abs(v - float(probs[label - 1, [f.key for f in onnx_model.ontology.findings].index(k)]))
             for label, values in got.finding_probs.items() for k, v in values.items()]
    return {"study": study.name, "shape": list(got.labels.shape), "voxel_agreement": agreement,
            "finding_prob_max_abs_diff": max(diffs) if diffs else 0.0,
            "onnx_predict_s": round(onnx_s, 3), "torch_predict_s": round(torch_s, 3)}


def default_parity_study(work: Path):
    """One small generated study for the label-map check, when the caller names none."""
    from model_export.data import read_generated_study
    from model_export.synth import SynthConfig, generate_study
    from model_export.synth.config import SMALL_TEST_CONFIG

    config = SynthConfig(use_spider=False, include_axial=False, include_localizer=False, **SMALL_TEST_CONFIG)
    generate_study(work / "parity_study", seed=987654, config=config)
    return read_generated_study(work / "parity_study")


def export_model(checkpoint: Path, out_dir: Path, name: str | None = None, version: str = "0.1.0",
                 parity_study: Any = None, metrics: dict[str, Any] | None = None, float16: bool = True,
                 with_text_encoder: bool = False) -> dict[str, Any]:
    """Write and check a model directory; returns the model card.

    By default the weights are stored as float16 and the text encoder is left out (its only use at
    serving, the ontology's prompt embeddings, is stored instead): the directory is a fraction of the
    float32 one with the text encoder, and the same checks against torch decide whether it exports."""
    model, ckpt = load_checkpoint(Path(checkpoint))
    if not isinstance(model, LumbarSegmenter) or not model.text_guided:
        raise ModelExportError(f"{checkpoint} is a {ckpt['run']['model']['kind']} model; only the text-guided "
                               "model exports to the three-graph model directory")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = model.cfg.input_size
    parity = export_graphs(model, out_dir, size, float16, with_text_encoder)
    embeddings: dict[str, Any] = {}
    if not with_text_encoder:
        with torch.no_grad():
            structures, findings = (t.detach().numpy() for t in model.class_embeddings())
        embeddings = write_prompt_embeddings(out_dir, Ontology.from_dict(ckpt["ontology"]), structures, findings)
    classifier = load_level_classifier(ckpt)
    (out_dir / LEVEL_CLASSIFIER_FILE).unlink(missing_ok=True)  # a re-export without one must not keep it
    if classifier is not None:
        with torch.no_grad():
            parity[LEVEL_CLASSIFIER_FILE] = export_level_classifier(
                classifier, model.class_embeddings()[1].detach(), out_dir, float16)
    refiner = load_outline_refiner(ckpt)
    (out_dir / OUTLINE_REFINER_FILE).unlink(missing_ok=True)
    if refiner is not None:
        parity[OUTLINE_REFINER_FILE] = export_outline_refiner(refiner, out_dir, float16)
    name = name or out_dir.name
    # a provisional card lets OnnxModel load the directory for the label-map check
    card = build_card(ckpt, parity, {}, name, version, metrics, embeddings)
    (out_dir / "model.json").write_text(json.dumps(card, indent=2))
    with tempfile.TemporaryDirectory() as tmp:
        study = parity_study if parity_study is not None else default_parity_study(Path(tmp))
        agreement = label_map_agreement(model, out_dir, study)
    if agreement["voxel_agreement"] < MIN_LABEL_AGREEMENT:
        raise ModelExportError(f"ONNX-only label map agrees with torch on {agreement['voxel_agreement']:.4%} "
                               f"of voxels, below {MIN_LABEL_AGREEMENT:.1%}")
    card = build_card(ckpt, parity, agreement, name, version, metrics, embeddings)
    (out_dir / "model.json").write_text(json.dumps(card, indent=2))
    log.info("exported %s: label agreement %.5f", out_dir, agreement["voxel_agreement"])
    return card
