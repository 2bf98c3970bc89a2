"""Series selection: which series are the sagittal T1 and T2, with a recorded reason for every series.

Acquisition parameters decide (TR, TE, TI, ScanningSequence: TR alone does not separate a T1 FLAIR from
a T2); SeriesDescription is free text in any language and only decides when parameters are missing, and
breaks ties between candidates. Localizers, derived images and our own outputs never become input.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from service.assemble.headers import InstanceHeader
from service.assemble.rules import SeriesRules
from service.queue.state import SeriesSummary

ROLES = ("T1", "T2")


@dataclass
class Selection:
    series: list[SeriesSummary]
    t1: SeriesSummary | None = None
    t2: SeriesSummary | None = None
    decisions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    """Why no job can be made (no sagittal T1 or T2), worded for the person who reads it."""
    instances: int = 0
    ignored_instances: int = 0
    selected_instances: list[tuple[str, int]] = field(default_factory=list)
    """(SOP Instance UID, size in bytes) of every instance of the selected series: the job id's content."""


def _orientation(header: InstanceHeader, min_abs: float) -> str:
    normal = header.slice_normal
    if normal is None:
        return "unknown"
    x, y, z = (abs(float(v)) for v in normal)
    if x >= min_abs:
        return "sagittal"
    if z >= min_abs:
        return "axial"
    if y >= min_abs:
        return "coronal"
    return "oblique"


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _classify(headers: list[InstanceHeader], rules: SeriesRules) -> tuple[SeriesSummary, bool, str]:
    """Summary of one series, whether it is a candidate, and its representative description."""
    first = headers[0]
    count = sum(h.frames for h in headers)
    summary = SeriesSummary(
        series_uid=first.series_uid,
        description=first.series_description,
        modality=first.modality,
        count=count,
        series_number=first.series_number,
    )
    params = f"TR {_ms(first.repetition_time)} ms, TE {_ms(first.echo_time)} ms"
    if first.inversion_time is not None:
        params += f", TI {_ms(first.inversion_time)} ms"
    if first.scanning_sequence:
        params += f", {'/'.join(first.scanning_sequence)}"

    orientations = Counter(_orientation(h, rules.sagittal_min_abs_x) for h in headers)
    summary.orientation = orientations.most_common(1)[0][0] if len(orientations) == 1 else "mixed"

    rule = rules.weighting_from_parameters(
        first.repetition_time, first.echo_time, first.inversion_time, first.scanning_sequence
    )
    from_description = rules.weighting_from_description(first.series_description)
    summary.weighting = rule.weighting if rule else (from_description or "unknown")

    if not all(h.modality == "MR" and h.has_pixels for h in headers):
        summary.weighting = "not-mr"
        summary.reason = f"ignored: not an MR image series (modality {first.modality or 'none'})"
        return summary, False, params
    if {h.manufacturer.strip().lower() for h in headers} & rules.excluded_manufacturers:
        summary.weighting = "ours"
        summary.reason = f"excluded: produced by {first.manufacturer} (results are never input)"
        return summary, False, params
    localizer_types = set().union(*(h.image_type for h in headers)) & rules.localizer_image_types
    if localizer_types or rules.is_localizer_description(first.series_description):
        summary.weighting = "localizer"
        why = f"ImageType {'/'.join(sorted(localizer_types))}" if localizer_types else "its description"
        summary.reason = f"excluded: localizer ({why})"
        return summary, False, params
    if summary.orientation == "mixed":
        summary.weighting = "localizer"
        summary.reason = "excluded: mixed slice orientations (a multi-plane localizer)"
        return summary, False, params
    if rules.exclude_derived and any(h.image_type[:1] == ("DERIVED",) for h in headers):
        summary.weighting = "derived"
        summary.reason = "excluded: derived images (ImageType DERIVED)"
        return summary, False, params
    if summary.orientation != "sagittal":
        summary.reason = f"excluded: not sagittal ({summary.orientation})"
        return summary, False, params
    if count < rules.min_images:
        summary.reason = f"excluded: only {count} images (at least {rules.min_images} needed)"
        return summary, False, params
    if summary.weighting not in ROLES:
        source = f"parameters ({params}) match rule '{rule.name}'" if rule else "no parameter rule matched"
        summary.reason = f"excluded: {summary.weighting} is neither T1 nor T2; {source}"
        return summary, False, params
    if rule:
        summary.reason = f"sagittal {summary.weighting} by parameters ({params}; rule '{rule.name}')"
        if from_description and from_description != summary.weighting:
            summary.reason += f"; description suggests {from_description}, parameters win"
    else:
        summary.reason = f"sagittal {summary.weighting} by its description ({params} matched no rule)"
    return summary, True, params


def _preference(summary: SeriesSummary, rules: SeriesRules) -> tuple:
    agrees = rules.weighting_from_description(summary.description) == summary.weighting
    return (agrees, summary.count, summary.series_number or 0)


def select_series(headers: list[InstanceHeader], rules: SeriesRules) -> Selection:
    """Decide the T1 and T2 series of a study from the headers of all its instances."""
    by_series: dict[str, list[InstanceHeader]] = {}
    for h in headers:
        by_series.setdefault(h.series_uid, []).append(h)
    selection = Selection(series=[], instances=len(headers))
    candidates: dict[str, list[SeriesSummary]] = {role: [] for role in ROLES}
    for series_headers in sorted(
        by_series.values(), key=lambda hs: (hs[0].series_number or 0, hs[0].series_uid)
    ):
        summary, candidate, _ = _classify(series_headers, rules)
        selection.series.append(summary)
        if summary.weighting == "not-mr":
            selection.ignored_instances += len(series_headers)
        if candidate:
            candidates[summary.weighting].append(summary)

    for role in ROLES:
        found = sorted(candidates[role], key=lambda s: _preference(s, rules), reverse=True)
        if not found:
            continue
        chosen = found[0]
        chosen.role = role.lower()
        chosen.reason = "selected: " + chosen.reason
        setattr(selection, role.lower(), chosen)
        selection.decisions.append(f"{role}: {chosen.label()} [{chosen.series_uid}]")
        for other in found[1:]:
            other.reason = (
                f"not selected: {chosen.label()} preferred (description, then size); " + other.reason
            )
    for s in selection.series:
        if s.role is None:
            selection.decisions.append(f"{s.label()} [{s.series_uid}]: {s.reason}")

    if selection.t1 is None and selection.t2 is None:
        found = ", ".join(s.label() for s in selection.series) or "nothing"
        selection.error = f"no sagittal T1 or T2 series; found: {found}"
        return selection
    for role in ROLES:
        if getattr(selection, role.lower()) is None:
            other = "T2" if role == "T1" else "T1"
            selection.warnings.append(f"no sagittal {role} series; using the sagittal {other} alone")
    chosen_uids = {s.series_uid for s in (selection.t1, selection.t2) if s is not None}
    selection.selected_instances = [(h.sop_uid, h.size) for h in headers if h.series_uid in chosen_uids]
    return selection
