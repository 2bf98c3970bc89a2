"""Each delivered level's findings: the model's score against the model card's threshold, or, for a disc
finding with a combiner, the model's score and the disc's measurements together.

The model's finding score comes from a level scorer run on the structures as delivered: the level
classifier's crops of each one (level_crops.py) when the model has one, else the finding maps pooled inside
it (finding_maps.py), or without either from the model's per-class probabilities of its raw label. The measurements
(disc_morphometry.py) say how far the delivered disc reaches behind the vertebral bodies. A small
logistic model over both, fitted on validation studies by ``lumbar-ai tune-thresholds`` and shipped in
the model card under ``finding_combiners``, turns them into one probability with its own threshold. A
model card without combiners, or a disc that could not be measured, keeps the model's score and the
card's threshold. Findings the card declares exclusive (``exclusive_findings``) are then settled: of each
group, at most the one furthest over its threshold stays present at a level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import numpy as np

from service.errors import ModelDirectoryError
from service.infer.disc_morphometry import FEATURES
from service.ontology import Ontology, Structure


class LevelScorer(Protocol):
    """Finding logits per delivered structure: ``FindingMaps`` and ``CroppedLevels`` both answer it."""

    def pool(self, labels: np.ndarray) -> dict[int, np.ndarray]:
        """label -> (F,) logits over the ontology's findings, for the structures present in ``labels``."""
        ...


LEARNED = "learned_logit"
"""The model's own probability, as a logit, is the first input of every combiner."""
PROBABILITY_FLOOR = 1e-6
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class FindingResult:
    key: str
    name: str
    probability: float
    threshold: float
    present: bool


@dataclass(frozen=True)
class FindingCombiner:
    finding: str
    features: tuple[str, ...]
    """Input names: LEARNED, then measurement names of DiscMorphometry.features()."""
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    """Each input is standardised with the validation set's mean and SD before the weights apply."""
    weights: tuple[float, ...]
    bias: float
    threshold: float

    def probability(self, learned: float, measurements: dict[str, float]) -> float:
        values = {LEARNED: logit(learned), **measurements}
        z = self.bias + sum(w * (values[name] - m) / s for name, w, m, s
                            in zip(self.features, self.weights, self.mean, self.scale, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, finding: str, data: dict[str, Any]) -> FindingCombiner:
        try:
            combiner = cls(finding, tuple(data["features"]), tuple(map(float, data["mean"])),
                           tuple(map(float, data["scale"])), tuple(map(float, data["weights"])),
                           float(data["bias"]), float(data["threshold"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelDirectoryError(f"finding combiner for {finding!r} is malformed: {exc}") from exc
        lengths = {len(combiner.features), len(combiner.mean), len(combiner.scale), len(combiner.weights)}
        if len(lengths) != 1 or combiner.features[:1] != (LEARNED,) or min(combiner.scale, default=1.0) <= 0:
            raise ModelDirectoryError(f"finding combiner for {finding!r} must start with {LEARNED!r} and give "
                                      "one positive scale, mean and weight per input")
        unknown = set(combiner.features[1:]) - set(FEATURES)
        if unknown:
            raise ModelDirectoryError(f"finding combiner for {finding!r} reads measurements this service does "
                                      f"not make: {sorted(unknown)}")
        return combiner


def combiners_from_card(card: dict[str, Any]) -> dict[str, FindingCombiner]:
    return {key: FindingCombiner.from_dict(key, data) for key, data in card.get("finding_combiners", {}).items()}


def logit(p: float) -> float:
    p = min(max(float(p), PROBABILITY_FLOOR), 1.0 - PROBABILITY_FLOOR)
    return math.log(p / (1.0 - p))


def pooled_probs(finding_maps: LevelScorer | None, labels: np.ndarray, ontology: Ontology
                 ) -> dict[int, dict[str, float]]:
    """Label -> {finding key: probability} from the model's level scorer, for the findings of the
    structure's site."""
    if finding_maps is None:
        return {}
    kinds = {s.label: s.kind for s in ontology.structures}
    return {label: {f.key: float(1.0 / (1.0 + np.exp(-v))) for f, v in zip(ontology.findings, logits, strict=True)
                    if f.site == kinds.get(label)}
            for label, logits in finding_maps.pool(labels).items()}


def exclusive_from_card(card: dict[str, Any], ontology: Ontology) -> tuple[tuple[str, ...], ...]:
    """The card's ``exclusive_findings``: groups of finding keys of which a level shows at most one."""
    groups = card.get("exclusive_findings", [])
    keys = {f.key for f in ontology.findings}
    if not isinstance(groups, list) or not all(
            isinstance(g, list) and len(g) > 1 and all(isinstance(k, str) and k in keys for k in g) for g in groups):
        raise ModelDirectoryError("exclusive_findings must be a list of groups of two or more finding keys of "
                                  f"the card's ontology, got {groups!r}")
    return tuple(tuple(g) for g in groups)


def level_findings(structure: Structure, probs: dict[str, float], ontology: Ontology,
                   thresholds: dict[str, float], combiners: dict[str, FindingCombiner] | None = None,
                   measurements: dict[str, float] | None = None,
                   exclusive: tuple[tuple[str, ...], ...] = ()) -> tuple[FindingResult, ...]:
    if structure.kind not in ("disc", "vertebra"):
        return ()
    out = []
    for finding in ontology.findings_at(structure.kind):  # type: ignore[arg-type]
        if finding.key not in probs:
            continue
        p = float(probs[finding.key])
        threshold = float(thresholds.get(finding.key, DEFAULT_THRESHOLD))
        combiner = (combiners or {}).get(finding.key)
        if combiner is not None and measurements is not None:
            p, threshold = combiner.probability(p, measurements), combiner.threshold
        out.append(FindingResult(finding.key, finding.name, round(p, 4), threshold, p >= threshold))
    return one_per_group(tuple(out), exclusive)


def one_per_group(results: tuple[FindingResult, ...], groups: Sequence[Sequence[str]] = ()
                  ) -> tuple[FindingResult, ...]:
    """At most one finding of each exclusive group present at a level: the one furthest over its own
    threshold, measured in logits so that thresholds far apart compare fairly. The others stay in the
    report with their probabilities, marked absent.

    The groups come from the model card's ``exclusive_findings``: findings that never shared a level in
    the training labels (for generated studies, disc bulging, protrusion and extrusion).
    """
    out = list(results)
    for group in groups:
        present = [i for i, r in enumerate(out) if r.key in group and r.present]
        if len(present) < 2:
            continue
        keep = max(present, key=lambda i: logit(out[i].probability) - logit(out[i].threshold))
        for i in present:
            if i != keep:
                out[i] = replace(out[i], present=False)
    return tuple(out)
