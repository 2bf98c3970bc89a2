"""Whether the worker reports one finding per exclusive group is decided on validation levels: kept where
the rule raises the group's F1, dropped where it would discard true findings as often as false ones."""

from __future__ import annotations

from model_export.evaluation.combiner_fit import LevelRow
from model_export.evaluation.exclusive_fit import group_counts, select_exclusive
from service.ontology import DEFAULT_ONTOLOGY as ONT

GROUP = ["disc_protrusion", "disc_extrusion"]
THRESHOLDS = {"disc_protrusion": 0.5, "disc_extrusion": 0.5}
L4_L5, L3_L4 = ONT.by_level("L4/L5", "disc").label, ONT.by_level("L3/L4", "disc").label


def _level(case: str, protrusion: tuple[float, bool], extrusion: tuple[float, bool]) -> list[LevelRow]:
    return [LevelRow("disc_protrusion", protrusion[0], None, protrusion[1], case, L4_L5),
            LevelRow("disc_extrusion", extrusion[0], None, extrusion[1], case, L4_L5)]


def test_the_rule_is_kept_where_the_true_member_is_surer_than_its_rival():
    # each herniation also fires its rival, less surely: the rule drops only false findings
    rows = [r for i in range(10) for r in _level(f"p{i}", (0.9, True), (0.6, False))]
    rows += [r for i in range(10) for r in _level(f"e{i}", (0.6, False), (0.9, True))]
    kept, report = select_exclusive([GROUP], rows, THRESHOLDS, {}, ONT)
    assert kept == [GROUP]
    figures = report["disc_protrusion / disc_extrusion"]
    assert figures["without_rule"]["fp"] == 20 and figures["with_rule"]["fp"] == 0
    assert figures["with_rule"]["tp"] == 20 and figures["kept"]


def test_the_rule_is_dropped_where_the_classifier_cannot_tell_the_members_apart():
    # the rival is as often surer as not: the rule discards half the true findings
    rows = [r for i in range(10) for r in _level(f"p{i}", (0.8, True), (0.9 if i % 2 else 0.7, False))]
    kept, report = select_exclusive([GROUP], rows, THRESHOLDS, {}, ONT)
    assert kept == [] and not report["disc_protrusion / disc_extrusion"]["kept"]


def test_levels_are_told_apart_by_case_and_label():
    one = _level("a", (0.9, True), (0.0, False))
    other = [LevelRow("disc_extrusion", 0.8, None, True, "a", L3_L4)]  # another disc of the same study
    counts = group_counts(GROUP, one + other, THRESHOLDS, {}, ONT, rule=True)
    assert (counts.tp, counts.fp, counts.fn) == (2, 0, 0)
