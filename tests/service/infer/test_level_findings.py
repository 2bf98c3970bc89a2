"""Per-level finding decisions: the model's score against the card's threshold, or a disc finding's
combiner over the score and the disc's measurements."""

from __future__ import annotations

import math

import pytest

from service.errors import ModelDirectoryError
from service.infer.level_findings import (
    LEARNED,
    FindingCombiner,
    FindingResult,
    combiners_from_card,
    level_findings,
    logit,
    one_per_group,
)
from service.ontology import DEFAULT_ONTOLOGY as ONT

DISC = ONT.by_level("L4/L5", "disc")
PROTRUSION = {"features": [LEARNED, "posterior_extent_mm", "migration_mm"], "mean": [0.0, 1.0, 0.0],
              "scale": [1.0, 2.0, 1.0], "weights": [0.5, 3.0, 0.0], "bias": -2.0, "threshold": 0.6}
"""A combiner names its inputs, so one fitted on fewer measurements still reads the right ones."""
PROBS = {"disc_bulging": 0.2, "disc_protrusion": 0.3, "disc_extrusion": 0.1, "schmorl_node": 0.05}


def test_combined_probability_is_the_logistic_of_the_standardised_inputs():
    combiner = combiners_from_card({"finding_combiners": {"disc_protrusion": PROTRUSION}})["disc_protrusion"]
    z = -2.0 + 0.5 * logit(0.3) + 3.0 * (5.0 - 1.0) / 2.0
    assert combiner.probability(0.3, {"posterior_extent_mm": 5.0, "migration_mm": 9.0}) == pytest.approx(
        1 / (1 + math.exp(-z)))


def test_a_combined_disc_finding_decides_with_its_own_threshold_and_others_with_the_cards():
    combiners = combiners_from_card({"finding_combiners": {"disc_protrusion": PROTRUSION}})
    thresholds = {"disc_protrusion": 0.25, "disc_bulging": 0.1}
    found = {f.key: f for f in level_findings(DISC, PROBS, ONT, thresholds, combiners,
                                              {"posterior_extent_mm": 0.0, "migration_mm": 0.0})}
    assert found["disc_protrusion"].threshold == 0.6
    assert not found["disc_protrusion"].present  # 0.3 would pass the card's 0.25; the flat disc does not
    assert found["disc_bulging"].present and found["disc_bulging"].threshold == 0.1


def test_an_unmeasured_disc_keeps_the_models_score_and_the_cards_threshold():
    combiners = combiners_from_card({"finding_combiners": {"disc_protrusion": PROTRUSION}})
    found = {f.key: f for f in level_findings(DISC, PROBS, ONT, {"disc_protrusion": 0.25}, combiners, None)}
    assert (found["disc_protrusion"].probability, found["disc_protrusion"].threshold) == (0.3, 0.25)
    assert found["disc_protrusion"].present


def test_a_card_without_combiners_has_none():
    assert combiners_from_card({"finding_thresholds": {}}) == {}


@pytest.mark.parametrize("broken", [
    {k: v for k, v in PROTRUSION.items() if k != "bias"},
    {**PROTRUSION, "weights": [1.0]},
    {**PROTRUSION, "features": ["posterior_extent_mm", LEARNED, "migration_mm"]},
    {**PROTRUSION, "scale": [1.0, 0.0, 1.0]},
    {**PROTRUSION, "features": [LEARNED, "posterior_extent_mm", "canal_area_mm2"]},
])
def test_a_malformed_combiner_is_a_model_directory_error_naming_the_finding(broken):
    with pytest.raises(ModelDirectoryError, match="disc_protrusion"):
        combiners_from_card({"finding_combiners": {"disc_protrusion": broken}})


def test_combiner_round_trips_through_the_card():
    combiner = FindingCombiner.from_dict("disc_protrusion", PROTRUSION)
    assert FindingCombiner.from_dict("disc_protrusion", combiner.to_dict()) == combiner


CONTOUR = [["disc_bulging", "disc_protrusion", "disc_extrusion"]]


def test_one_finding_of_an_exclusive_group_stays_the_one_furthest_over_its_threshold():
    results = (FindingResult("disc_bulging", "bulging", 0.6, 0.5, True),
               FindingResult("disc_protrusion", "protrusion", 0.5, 0.2, True),  # furthest over, in logits
               FindingResult("disc_extrusion", "extrusion", 0.9, 0.8, True),
               FindingResult("schmorl_node", "node", 0.7, 0.5, True))
    kept = {r.key: r for r in one_per_group(results, CONTOUR)}
    assert [k for k, r in kept.items() if r.present] == ["disc_protrusion", "schmorl_node"]
    assert kept["disc_extrusion"].probability == 0.9  # still reported, only marked absent


def test_without_groups_or_rivals_every_decision_stands():
    results = (FindingResult("disc_bulging", "bulging", 0.6, 0.5, True),
               FindingResult("disc_protrusion", "protrusion", 0.1, 0.2, False))
    assert one_per_group(results, CONTOUR) == results
    two = results[:1] + (FindingResult("disc_protrusion", "protrusion", 0.9, 0.2, True),)
    assert one_per_group(two, []) == two
