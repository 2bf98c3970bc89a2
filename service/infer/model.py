"""The ONNX-only inference path of the text-guided model (numpy, onnxruntime, tokenizers; no torch).

A model directory written by ``lumbar-ai export`` holds two graphs (more with a level classifier or an
outline refiner), the embeddings of its ontology's prompts and the model card:

* ``prompt_embeddings.npz``: the mean embedding per class that guides the fusion head, computed at export
  by the trained text encoder (service.infer.prompt_embeddings). A directory exported with its
  ``text_encoder.onnx`` and ``tokenizer.json`` instead embeds the card's prompts at load.
* ``image_encoder.onnx``: (B, 2, S, S) normalised [T2, T1] slices -> decoder features and a pooled vector.
* ``fusion_head.onnx``: features + class and finding embeddings -> per-slice label map on the original
  grid, and per-structure sums from which per-level finding probabilities are pooled over the volume.
* ``level_classifier.onnx`` (optional, when the card has a ``level_classifier`` section): fine crops
  around each delivered disc and vertebra + finding embeddings -> per-level finding logits
  (``service.infer.level_crops``), in place of the pooled finding maps.
* ``outline_refiner.onnx`` (optional, when the card has an ``outline_refiner`` section): one delivered
  structure on one slice, close up -> its mask logits (``service.infer.outline_crops``); post-processing
  redraws each disc and vertebra with it.

The training code imports the preprocessing functions below, so serving and training resize and
normalise the same way. Post-processing (connected components, level consistency) is the worker's job:
``predict`` returns the raw argmax.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import InferenceError, ModelDirectoryError
from service.infer.finding_maps import FindingMaps, pool_dilation_from_card
from service.infer.input_view import InputView, SliceBox, crop_to_box, paste_from_box, survey_slices
from service.infer.level_crops import CroppedLevels, CropSpec, scored_labels
from service.infer.level_findings import combiners_from_card, exclusive_from_card
from service.infer.onnx_session import OnnxGraph
from service.infer.outline_crops import OutlineRefiner, OutlineSpec, refined_labels
from service.infer.prompt_embeddings import (
    TEXT_ENCODER_FILE,
    embed_ontology_prompts,
    read_prompt_embeddings,
    uses_text_encoder,
)
from service.ontology import Ontology

GRAPH_FILES = ("image_encoder.onnx", "fusion_head.onnx")
LEVEL_CLASSIFIER_FILE = "level_classifier.onnx"
"""Optional fourth graph (model_export.model.level_classifier): present when the card has a
``level_classifier`` section, and then it scores the delivered levels' findings instead of the pooled
finding maps."""
OUTLINE_REFINER_FILE = "outline_refiner.onnx"
"""Optional graph (model_export.model.outline_refiner): present when the card has an ``outline_refiner``
section, and then post-processing redraws each delivered disc and vertebra with it."""
DEFAULT_NORMALISATION = {"method": "percentile_scale", "percentile": 99.5, "clip": [0.0, 2.0],
                         "missing_sequence": "zeros"}


# ---------------------------------------------------------------- preprocessing (shared with training)

def normalise_intensity(volume: np.ndarray, percentile: float = 99.5, clip: tuple[float, float] = (0.0, 2.0)
                        ) -> np.ndarray:
    """Scale so that the given percentile maps to 1: MR intensities have no absolute unit."""
    volume = np.asarray(volume, dtype=np.float32)
    scale = float(np.percentile(volume, percentile)) if volume.size else 0.0
    if not np.isfinite(scale) or scale <= 0:
        return np.zeros_like(volume)
    return np.clip(volume / scale, clip[0], clip[1]).astype(np.float32)


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an antialiased linear resize with half-pixel centres.

    Written as a matrix so a slice stack resizes with two matrix products; the triangle filter widens
    with the downscale factor so that noise does not alias when 512-pixel slices shrink to the model size.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    taps = np.arange(n_in)
    weights = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centres[:, None]) / support)
    sums = weights.sum(axis=1, keepdims=True)
    sums[sums == 0] = 1.0
    return (weights / sums).astype(np.float32)


def resize_slices(volume: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(n, rows, cols) -> (n, size[0], size[1]) with :func:`resize_matrix` along both in-plane axes."""
    rows = resize_matrix(volume.shape[1], size[0])
    cols = resize_matrix(volume.shape[2], size[1])
    return np.einsum("rR,nRC,cC->nrc", rows, volume.astype(np.float32), cols, optimize=True)


def square_side(rows: int, cols: int) -> int:
    return max(rows, cols)


def pad_to_square(volume: np.ndarray) -> np.ndarray:
    """Zero-pad (n, rows, cols) at the bottom and right to a square, so resizing keeps the aspect ratio."""
    return crop_to_box(volume, SliceBox.square(volume.shape[1], volume.shape[2]))


def reference_volume(t2: np.ndarray | None, t1: np.ndarray | None) -> np.ndarray:
    """The volume whose grid the prediction lives on: T2, or T1 when T2 is missing."""
    reference = t2 if t2 is not None else t1
    if reference is None:
        raise InferenceError("neither a T2 nor a T1 volume was given")
    if reference.ndim != 3:
        raise InferenceError(f"expected a (slices, rows, cols) volume, got shape {reference.shape}")
    return reference


def model_input(t2: np.ndarray | None, t1: np.ndarray | None, size: tuple[int, int],
                normalisation: dict[str, Any] | None = None, box: SliceBox | None = None) -> np.ndarray:
    """(n, 2, H, W) float32 in channel order [T2, T1]; a missing sequence is a channel of zeros.

    Each series is normalised over the whole volume, cut to ``box`` (default: zero-padded to a square)
    and resized, so a box of the input's aspect ratio is not distorted; predictions come back on the
    box's grid and are pasted into the slice.
    """
    norm = normalisation or DEFAULT_NORMALISATION
    reference = reference_volume(t2, t1)
    channels = []
    for volume in (t2, t1):
        if volume is None:
            channels.append(np.zeros((reference.shape[0], *size), dtype=np.float32))
            continue
        if volume.shape != reference.shape:
            raise InferenceError(f"T2 and T1 must share one grid, got {t2.shape} and {t1.shape}")
        scaled = normalise_intensity(volume, norm["percentile"], tuple(norm["clip"]))
        view_box = box or SliceBox.square(scaled.shape[1], scaled.shape[2])
        channels.append(resize_slices(crop_to_box(scaled, view_box), size))
    return np.stack(channels, axis=1).astype(np.float32)


def normalised_channels(t2: np.ndarray | None, t1: np.ndarray | None,
                        normalisation: dict[str, Any] | None = None) -> np.ndarray:
    """(2, n, rows, cols) float32 [T2, T1] on the acquisition grid, each normalised over its volume as
    :func:`model_input` does (the level classifier's crops are cut from these)."""
    norm = normalisation or DEFAULT_NORMALISATION
    reference = reference_volume(t2, t1)
    return np.stack([np.zeros(reference.shape, np.float32) if v is None
                     else normalise_intensity(v, norm["percentile"], tuple(norm["clip"])) for v in (t2, t1)])


def pool_findings(class_mass: np.ndarray, finding_mass: np.ndarray) -> np.ndarray:
    """Volume-level finding logits per structure (K, F): log of the mass-weighted mean of exp(logit).

    The fusion head returns per-slice sums, so pooling over any number of slice batches is a sum.
    """
    mass = class_mass.sum(axis=0)[:, None]
    total = finding_mass.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.maximum(total, 1e-30) / np.maximum(mass, 1e-30))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------- the model

@dataclass
class Prediction:
    labels: np.ndarray
    """uint8 (n_slices, rows, cols) on the input grid; raw argmax."""
    finding_probs: dict[int, dict[str, float]]
    """structure label -> {finding key: probability} for findings whose site matches the structure's kind."""
    finding_maps: FindingMaps | CroppedLevels | None = None
    """What scores the delivered structures' findings: the level classifier bound to this study, or the
    per-slice finding logits to pool inside them; None from an older export."""
    timings: dict[str, float] = field(default_factory=dict)
    box: SliceBox | None = None
    """The box of each slice that the model read (the spine band, or the padded square)."""
    outline_refiner: OutlineRefiner | None = None
    """The model's outline refiner bound to this study, for post-processing; None without one."""


@dataclass
class ViewOutputs:
    """One pass of the graphs over a study: labels on the slice grid and the fusion head's sums."""

    labels: np.ndarray
    class_mass: np.ndarray
    finding_mass: np.ndarray
    maps: np.ndarray | None


class OnnxModel:
    """A model directory loaded into ONNX Runtime sessions, with the prompt embeddings computed once."""

    def __init__(self, model_dir: Path, card: dict[str, Any], graphs: dict[str, OnnxGraph],
                 structure_embeddings: np.ndarray, finding_embeddings: np.ndarray) -> None:
        self.model_dir = model_dir
        self.card = card
        self.ontology = Ontology.from_dict(card["ontology"])
        self.version = str(card.get("version", "unknown"))
        self.graphs = graphs
        self.structure_embeddings = structure_embeddings
        self.finding_embeddings = finding_embeddings
        self.view = InputView.from_card(card["input"])
        self.normalisation = card["input"].get("intensity_normalisation", DEFAULT_NORMALISATION)
        self.finding_thresholds = dict(card.get("finding_thresholds", {}))
        self.finding_combiners = combiners_from_card(card)
        self.exclusive_findings = exclusive_from_card(card, self.ontology)
        self.finding_pool_dilation = pool_dilation_from_card(card)
        self.level_crop = level_crop_from_card(card)
        self.outline_crop = outline_crop_from_card(card)

    @property
    def providers(self) -> list[str]:
        """Execution providers the sessions actually run on (unavailable ones were skipped at load)."""
        return sorted({p for graph in self.graphs.values() for p in graph.session.get_providers()})

    @classmethod
    def load(cls, model_dir: Path, providers: list[str] | None = None, intra_op_threads: int = 0,
             inter_op_threads: int = 1) -> OnnxModel:
        model_dir = Path(model_dir)
        card_path = model_dir / "model.json"
        if not card_path.is_file():
            raise ModelDirectoryError(f"no model.json in {model_dir}")
        try:
            card = json.loads(card_path.read_text())
            Ontology.from_dict(card["ontology"])
            InputView.from_card(card["input"])
            pool_dilation_from_card(card)
            level_crop = level_crop_from_card(card)
            outline_crop = outline_crop_from_card(card)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ModelDirectoryError(f"model card {card_path} is malformed: {exc}") from exc
        names = (GRAPH_FILES + ((TEXT_ENCODER_FILE,) if uses_text_encoder(card) else ())
                 + ((LEVEL_CLASSIFIER_FILE,) if level_crop is not None else ())
                 + ((OUTLINE_REFINER_FILE,) if outline_crop is not None else ()))
        stored = None if uses_text_encoder(card) else read_prompt_embeddings(model_dir, card)
        graphs = {name: OnnxGraph(model_dir / name, providers, intra_op_threads, inter_op_threads)
                  for name in names}
        structures, findings = stored or embed_ontology_prompts(model_dir, card, graphs.pop(TEXT_ENCODER_FILE))
        return cls(model_dir, card, graphs, structures, findings)

    def predict(self, t2: np.ndarray | None, t1: np.ndarray | None, pixel_spacing: tuple[float, float],
                slice_batch: int = 8, grid: Any = None) -> Prediction:
        """Label map on the grid of the inputs and per-level finding probabilities.

        ``pixel_spacing`` is accepted for the contract; this model resizes every slice to a fixed size,
        so the spacing does not change the computation. A model with a spine band view runs twice (see
        ``service.infer.input_view``): the survey's labels only place the band. ``grid`` (the reference
        series' geometry) lets a model with a level classifier crop each delivered level in patient
        directions; without it the finding maps score the levels.
        """
        del pixel_spacing
        timings: dict[str, float] = {}
        box = SliceBox.square(*reference_volume(t2, t1).shape[1:])
        if self.view.band_size is not None:
            survey = self._run_view(survey_slices(t2), survey_slices(t1), self.view.survey_size, box, slice_batch,
                                    timings, "survey_")
            box = self.view.band_box(survey.labels)
            final = self._run_view(t2, t1, self.view.band_size, box, slice_batch, timings, "")
        else:
            final = self._run_view(t2, t1, self.view.survey_size, box, slice_batch, timings, "")
        t0 = time.perf_counter()
        finding_probs = self._finding_probs(final.labels, final.class_mass, final.finding_mass)
        timings["findings"] = time.perf_counter() - t0
        finding_maps: FindingMaps | CroppedLevels | None = (
            FindingMaps(final.maps, box, self.finding_pool_dilation) if final.maps is not None else None)
        refiner = None
        if grid is not None and (self.level_crop is not None or self.outline_crop is not None):
            channels = normalised_channels(t2, t1, self.normalisation)  # both second networks crop these
            if self.level_crop is not None:
                finding_maps = self.cropped_levels(t2, t1, grid, channels)
            if self.outline_crop is not None:
                refiner = self.outline_refiner(t2, t1, grid, channels)
        return Prediction(labels=final.labels, finding_probs=finding_probs, finding_maps=finding_maps,
                          timings=timings, box=box, outline_refiner=refiner)

    def cropped_levels(self, t2: np.ndarray | None, t1: np.ndarray | None, grid: Any,
                       channels: np.ndarray | None = None) -> CroppedLevels:
        """The level classifier bound to this study, scoring whichever levels post-processing delivers.
        ``channels``: the study's ``normalised_channels``, when the caller has them already."""
        if self.level_crop is None:
            raise InferenceError(f"model {self.version} has no level classifier")
        graph = self.graphs[LEVEL_CLASSIFIER_FILE]
        if channels is None:
            channels = normalised_channels(t2, t1, self.normalisation)
        return CroppedLevels(channels, grid, self.level_crop,
                             scored_labels(self.ontology),
                             lambda crops: graph.run(crops=crops, finding_embeddings=self.finding_embeddings)["logits"])

    def outline_refiner(self, t2: np.ndarray | None, t1: np.ndarray | None, grid: Any,
                        channels: np.ndarray | None = None) -> OutlineRefiner:
        """The outline refiner bound to this study, redrawing whichever structures post-processing names."""
        if self.outline_crop is None:
            raise InferenceError(f"model {self.version} has no outline refiner")
        graph = self.graphs[OUTLINE_REFINER_FILE]
        if channels is None:
            channels = normalised_channels(t2, t1, self.normalisation)
        return OutlineRefiner(channels, grid, self.outline_crop,
                              refined_labels(self.ontology), lambda inputs: graph.run(inputs=inputs)["logits"])

    def _run_view(self, t2: np.ndarray | None, t1: np.ndarray | None, size: tuple[int, int], box: SliceBox,
                  slice_batch: int, timings: dict[str, float], prefix: str) -> ViewOutputs:
        """The three graphs over every slice seen through ``box`` at ``size``; labels on the slice grid."""
        t0 = time.perf_counter()
        x = model_input(t2, t1, size, self.normalisation, box)
        labels = np.zeros(reference_volume(t2, t1).shape, dtype=np.uint8)
        grid = np.zeros((1, 1, box.rows, box.cols), dtype=np.float32)
        timings[prefix + "preprocess"] = time.perf_counter() - t0
        class_mass, finding_mass, maps = [], [], []
        encoder_s = fusion_s = 0.0
        for start in range(0, len(x), max(1, slice_batch)):
            batch = x[start:start + slice_batch]
            t0 = time.perf_counter()
            enc = self.graphs["image_encoder.onnx"].run(image=batch)
            t1_ = time.perf_counter()
            out = self.graphs["fusion_head.onnx"].run(
                features=enc["features"], pooled=enc["pooled"],
                structure_embeddings=self.structure_embeddings,
                finding_embeddings=self.finding_embeddings, output_grid=grid)
            encoder_s += t1_ - t0
            fusion_s += time.perf_counter() - t1_
            paste_from_box(labels[start:start + len(batch)], out["labels"], box)
            class_mass.append(out["class_mass"])
            finding_mass.append(out["finding_mass"])
            if "finding_logits" in out:  # absent from graphs exported before it was added
                maps.append(out["finding_logits"])
        timings[prefix + "image_encoder"] = encoder_s
        timings[prefix + "fusion_head"] = fusion_s
        return ViewOutputs(labels, np.concatenate(class_mass), np.concatenate(finding_mass),
                           np.concatenate(maps) if maps else None)

    def _finding_probs(self, labels: np.ndarray, class_mass: np.ndarray, finding_mass: np.ndarray
                       ) -> dict[int, dict[str, float]]:
        probs = sigmoid(pool_findings(class_mass, finding_mass))
        present = set(np.unique(labels).tolist()) - {0}
        result: dict[int, dict[str, float]] = {}
        for structure in self.ontology.structures:
            if structure.label not in present or structure.kind == "sacrum":
                continue
            result[structure.label] = {
                f.key: float(probs[structure.label - 1, j])
                for j, f in enumerate(self.ontology.findings) if f.site == structure.kind
            }
        return result


def level_crop_from_card(card: dict[str, Any]) -> CropSpec | None:
    """The level classifier's crop, or None for a model without one; ValueError when malformed."""
    section = _crop_section(card, "level_classifier")
    return None if section is None else CropSpec.from_card(section)


def outline_crop_from_card(card: dict[str, Any]) -> OutlineSpec | None:
    """The outline refiner's crop, or None for a model without one; ValueError when malformed."""
    section = _crop_section(card, "outline_refiner")
    return None if section is None else OutlineSpec.from_card(section)


def _crop_section(card: dict[str, Any], name: str) -> dict[str, Any] | None:
    section = card.get(name)
    if section is None:
        return None
    if not isinstance(section, dict) or not isinstance(section.get("crop"), dict):
        raise ValueError(f"{name} must hold a crop section")
    return section["crop"]
