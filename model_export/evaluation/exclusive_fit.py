"""Decide on validation studies whether the service reports one finding per exclusive group.

``train-levels`` finds the groups (findings that never share a training level, such as disc bulging,
protrusion and extrusion in the generated studies) and trains the classifier to rank them against each
other. Whether reporting only the one furthest over its threshold is better than reporting every finding
over its threshold depends on how well the classifier tells the members apart: where it cannot, the rule
drops a true finding as often as a false one. So each group is kept for the model card only where the
rule raises the group's F1 on the delivered levels of the validation studies, with the thresholds and
combiners the card will carry.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from model_export.evaluation.combiner_fit import LevelRow
from model_export.evaluation.metrics import Counts
from service.infer.level_findings import FindingCombiner, level_findings
from service.ontology import Ontology


def _f1(counts: Counts) -> float:
    return 2 * counts.tp / max(1, 2 * counts.tp + counts.fp + counts.fn)


def group_counts(group: list[str], rows: list[LevelRow], thresholds: dict[str, float],
                 combiners: dict[str, FindingCombiner], ontology: Ontology, rule: bool) -> Counts:
    """The group's counts over every level of ``rows``, decided by the service's own ``level_findings``."""
    levels: dict[tuple[str, int], list[LevelRow]] = defaultdict(list)
    for row in rows:
        if row.finding in group:
            levels[(row.case, row.label)].append(row)
    counts = Counts()
    for (_, label), members in levels.items():
        actual = {row.finding: row.actual for row in members}
        decided = level_findings(ontology.by_label(label), {row.finding: row.learned for row in members}, ontology,
                                 thresholds, combiners, members[0].measurements, (tuple(group),) if rule else ())
        for result in decided:
            counts.add(result.present, actual[result.key])
    return counts


def select_exclusive(groups: list[list[str]], rows: list[LevelRow], thresholds: dict[str, float],
                     combiners: dict[str, FindingCombiner], ontology: Ontology
                     ) -> tuple[list[list[str]], dict[str, Any]]:
    """The groups whose one-per-level rule raises their F1 on ``rows``, and the figures of every group."""
    kept, report = [], {}
    for group in groups:
        without = group_counts(group, rows, thresholds, combiners, ontology, rule=False)
        with_rule = group_counts(group, rows, thresholds, combiners, ontology, rule=True)
        keep = _f1(with_rule) > _f1(without)
        report[" / ".join(group)] = {"without_rule": {**without.rates(), "f1": round(_f1(without), 4)},
                                     "with_rule": {**with_rule.rates(), "f1": round(_f1(with_rule), 4)},
                                     "kept": keep}
        if keep:
            kept.append(list(group))
    return kept, report
