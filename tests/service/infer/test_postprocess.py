"""Post-processing on hand-made label maps whose right answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from service.infer.postprocess import postprocess
from service.infer.series import SeriesVolume
from service.ontology import DEFAULT_ONTOLOGY as ONT
from tests.service.encode.label_factory import CANONICAL, DISC_ROWS, VERTEBRA_ROWS
from tests.service.encode.label_factory import spine as _spine

SPACING = (0.8, 0.8)
SLICE = 4.0
ROWS, COLS, SLICES = 200, 48, 5


def spine(labels: list[int], head_at_top: bool = True) -> np.ndarray:
    return _spine(labels, (SLICES, ROWS, COLS), head_at_top)


def grid(head_at_top: bool = True) -> SeriesVolume:
    """Sagittal grid; rows run head to feet (or feet to head when head_at_top is False)."""
    col_dir = np.array([0.0, 0.0, -1.0 if head_at_top else 1.0])
    row_dir = np.array([0.0, 1.0, 0.0])
    return SeriesVolume(
        pixels=np.zeros((SLICES, ROWS, COLS), np.float32),
        datasets=[],
        origin=np.array([-10.0, -50.0, 100.0]),
        row_dir=row_dir,
        col_dir=col_dir,
        normal=np.cross(row_dir, col_dir),
        pixel_spacing=SPACING,
        slice_spacing=SLICE,
    )


def test_consistent_spine_is_kept_as_is_and_ordered_caudal_to_cranial():
    result = postprocess(spine(CANONICAL), {}, ONT, {}, grid())
    assert [lv.label for lv in result.levels] == CANONICAL
    assert result.changes == []
    np.testing.assert_array_equal(result.labels, spine(CANONICAL))
    l4 = result.level(ONT.by_level("L4", "vertebra").label)
    assert l4.voxels == 3 * VERTEBRA_ROWS * 30
    assert l4.volume_mm3 == pytest.approx(l4.voxels * SPACING[0] * SPACING[1] * SLICE)
    assert l4.disc_height_mm is None
    assert result.spine_axis[2] == pytest.approx(1.0, abs=1e-6)


def test_disc_height_of_a_flat_disc_is_its_thickness():
    result = postprocess(spine(CANONICAL), {}, ONT, {}, grid())
    disc = result.level(ONT.by_level("L4/L5", "disc").label)
    assert disc.disc_height_mm == pytest.approx(DISC_ROWS * SPACING[0], rel=1e-6)


def test_disc_height_of_a_tilted_disc_is_measured_across_the_local_axis():
    labels = np.zeros((SLICES, ROWS, COLS * 3), np.uint8)
    rr, cc = np.mgrid[0:ROWS, 0 : COLS * 3].astype(float)
    angle = np.deg2rad(25.0)  # lordosis: the whole stack is rotated in the sagittal plane
    along = (rr - 100) * np.cos(angle) + (cc - 70) * np.sin(angle)
    across = -(rr - 100) * np.sin(angle) + (cc - 70) * np.cos(angle)
    bands = [
        (-30, -10, ONT.by_level("L4", "vertebra").label),
        (-10, 0, ONT.by_level("L4/L5", "disc").label),
        (0, 20, ONT.by_level("L5", "vertebra").label),
    ]
    for lo, hi, label in bands:
        labels[1:4][:, (along >= lo) & (along < hi) & (np.abs(across) < 20)] = label
    g = grid()
    g.pixels = np.zeros(labels.shape, np.float32)
    disc = postprocess(labels, {}, ONT, {}, g).level(ONT.by_level("L4/L5", "disc").label)
    assert disc.disc_height_mm == pytest.approx(10 * SPACING[0], rel=0.08)
    # A vertical measurement would read 10 / cos(25 deg) = 11 pixels and fail the tolerance above.


def test_small_fragment_of_a_label_is_removed_and_recorded():
    labels = spine(CANONICAL)
    l3 = ONT.by_level("L3", "vertebra").label
    labels[2, 5:8, 0:3] = l3  # a few voxels far from the spine, four levels above L3's body
    result = postprocess(labels, {}, ONT, {}, grid())
    assert [(c.kind, c.raw_label, c.voxels) for c in result.changes] == [("dropped", l3, 9)]
    np.testing.assert_array_equal(result.labels, spine(CANONICAL))


def test_swapped_vertebrae_are_relabelled_in_order_and_keep_their_findings():
    l3, l4 = ONT.by_level("L3", "vertebra").label, ONT.by_level("L4", "vertebra").label
    swapped = [{l3: l4, l4: l3}.get(v, v) for v in CANONICAL]
    probs = {l3: {"vertebral_degeneration": 0.9}, l4: {"vertebral_degeneration": 0.1}}
    result = postprocess(spine(swapped), probs, ONT, {"vertebral_degeneration": 0.5}, grid())

    assert [lv.label for lv in result.levels] == CANONICAL
    np.testing.assert_array_equal(result.labels, spine(CANONICAL))
    relabelled = {(c.raw_label, c.label) for c in result.changes if c.kind == "relabelled"}
    assert relabelled == {(l3, l4), (l4, l3)}
    # The component the model called L3 (now L4) carries the probability the model gave it.
    assert result.level(l4).raw_label == l3
    assert result.level(l4).findings[0].probability == pytest.approx(0.9)
    assert result.level(l4).findings[0].present


def test_a_label_used_twice_is_relabelled_to_the_free_level():
    l3, l4 = ONT.by_level("L3", "vertebra").label, ONT.by_level("L4", "vertebra").label
    twice = [l4 if v == l3 else v for v in CANONICAL]
    result = postprocess(spine(twice), {}, ONT, {}, grid())
    assert [lv.label for lv in result.levels] == CANONICAL
    assert [(c.kind, c.raw_label, c.label) for c in result.changes] == [("relabelled", l4, l3)]


def test_a_second_sacrum_above_the_lumbar_spine_is_dropped():
    sacrum = ONT.by_level("S1", "sacrum").label
    result = postprocess(spine([*CANONICAL[:5], sacrum]), {}, ONT, {}, grid())
    assert [lv.label for lv in result.levels] == CANONICAL[:5]
    assert [(c.kind, c.raw_label) for c in result.changes] == [("dropped", sacrum)]
    assert not (result.labels == 0).all() and (result.labels == sacrum).sum() == 3 * VERTEBRA_ROWS * 30


def test_a_missed_disc_leaves_a_gap_without_relabelling():
    without = [v for v in CANONICAL if v != ONT.by_level("L3/L4", "disc").label]
    result = postprocess(spine(without), {}, ONT, {}, grid())
    assert [lv.label for lv in result.levels] == without
    assert result.changes == []


def test_order_follows_patient_space_not_row_index():
    result = postprocess(spine(CANONICAL, head_at_top=False), {}, ONT, {}, grid(head_at_top=False))
    assert [lv.label for lv in result.levels] == CANONICAL
    assert result.changes == []


def test_labels_outside_the_ontology_are_dropped():
    labels = spine(CANONICAL)
    labels[0, 0:10, 0:10] = 42
    result = postprocess(labels, {}, ONT, {}, grid())
    assert [(c.kind, c.raw_label, c.voxels) for c in result.changes] == [("dropped", 42, 100)]
    assert 42 not in result.labels


def test_findings_use_card_thresholds_and_only_the_findings_of_the_site():
    disc = ONT.by_level("L4/L5", "disc").label
    vertebra = ONT.by_level("L4", "vertebra").label
    probs = {
        disc: {
            "disc_bulging": 0.7,
            "disc_protrusion": 0.2,
            "schmorl_node": 0.55,
            "vertebral_degeneration": 0.99,
        },
        vertebra: {"vertebral_degeneration": 0.3, "disc_extrusion": 0.99},
    }
    thresholds = {"disc_bulging": 0.6, "schmorl_node": 0.6, "vertebral_degeneration": 0.25}
    result = postprocess(spine(CANONICAL), probs, ONT, thresholds, grid())

    disc_findings = {f.key: f for f in result.level(disc).findings}
    assert set(disc_findings) == {"disc_bulging", "disc_protrusion", "schmorl_node"}
    assert disc_findings["disc_bulging"].present and disc_findings["disc_bulging"].threshold == 0.6
    assert not disc_findings["disc_protrusion"].present  # default threshold 0.5
    assert not disc_findings["schmorl_node"].present
    vertebra_findings = result.level(vertebra).findings
    assert [(f.key, f.present) for f in vertebra_findings] == [("vertebral_degeneration", True)]
    assert result.level(ONT.by_level("S1", "sacrum").label).findings == ()


def test_a_delivered_disc_keeps_one_finding_of_an_exclusive_group():
    disc = ONT.by_level("L4/L5", "disc").label
    probs = {disc: {"disc_bulging": 0.7, "disc_protrusion": 0.9, "disc_extrusion": 0.6, "schmorl_node": 0.8}}
    contour = (("disc_bulging", "disc_protrusion", "disc_extrusion"),)
    result = postprocess(spine(CANONICAL), probs, ONT, {}, grid(), exclusive_findings=contour)
    present = [f.key for f in result.level(disc).findings if f.present]
    assert present == ["disc_protrusion", "schmorl_node"]


def test_empty_prediction_gives_no_levels():
    result = postprocess(np.zeros((SLICES, ROWS, COLS), np.uint8), {}, ONT, {}, grid())
    assert result.levels == [] and result.changes == [] and not result.labels.any()


def test_result_serialises_to_plain_data():
    import json

    result = postprocess(spine(CANONICAL), {}, ONT, {}, grid())
    data = json.loads(json.dumps(result.to_dict()))
    assert [lv["name"] for lv in data["levels"]][:3] == ["Sacrum", "L5/S1 disc", "L5 vertebra"]


def test_a_column_named_one_level_too_high_is_counted_again_from_the_sacrum():
    order = [s.label for s in ONT.caudal_to_cranial()]
    shifted = [order[0]] + order[3:13]  # sacrum, then L4/L5 disc where L5/S1 is, and so on up
    result = postprocess(spine(shifted), {}, ONT, {}, grid())
    assert [lv.label for lv in result.levels] == CANONICAL
    np.testing.assert_array_equal(result.labels, spine(CANONICAL))
    assert all(c.kind == "relabelled" and c.reason == "counted from the sacrum" for c in result.changes)
    assert len(result.changes) == 10


def test_levels_missed_just_above_the_sacrum_are_counted_in_the_gap():
    order = [s.label for s in ONT.caudal_to_cranial()]
    truth = spine(CANONICAL)
    truth[np.isin(truth, order[1:3])] = 0  # the model found neither the L5/S1 disc nor L5
    called = truth.copy()
    for i in range(3, 11):  # ... and named the rest from the lowest disc it found: L4/L5 became "L5/S1"
        called[truth == order[i]] = order[i - 2]
    result = postprocess(called, {}, ONT, {}, grid())
    assert [lv.label for lv in result.levels] == [order[0], *order[3:11]]
    np.testing.assert_array_equal(result.labels, truth)


def test_the_top_of_the_sacrum_taken_for_l5_is_sacrum_and_the_disc_above_it_l5_s1():
    order = [s.label for s in ONT.caudal_to_cranial()]
    truth = spine(CANONICAL)
    called = np.zeros_like(truth)
    for i in range(1, 11):  # every disc and vertebra called one level too high
        called[truth == order[i]] = order[i + 2]
    sacrum_rows = np.flatnonzero((truth == order[0]).any(axis=(0, 2)))
    called[truth == order[0]] = order[0]
    top = called[:, sacrum_rows[:7]]
    top[top == order[0]] = order[2]  # the upper half of the sacrum called "L5", with no disc under it
    called[:, sacrum_rows[:7]] = top
    result = postprocess(called, {}, ONT, {}, grid())
    assert [lv.label for lv in result.levels] == CANONICAL
    np.testing.assert_array_equal(result.labels, truth)


def test_without_a_sacrum_the_model_names_win_and_a_consistent_column_is_kept():
    upper = CANONICAL[3:]  # L4/L5 disc up to L1: the sacrum and L5 are out of view
    result = postprocess(spine(upper), {}, ONT, {}, grid())
    assert [lv.label for lv in result.levels] == upper
    assert result.changes == []


def test_a_vertebra_painted_with_two_level_labels_becomes_one_structure():
    labels = spine(CANONICAL)
    l3, l4 = ONT.by_level("L3", "vertebra").label, ONT.by_level("L4", "vertebra").label
    rows = np.flatnonzero((labels == l3).any(axis=(0, 2)))
    bottom = labels[:, rows[-4]:rows[-1] + 1]  # a view: the lowest four rows of L3
    bottom[bottom == l3] = l4  # the lowest rows of L3 called L4
    result = postprocess(labels, {}, ONT, {}, grid())
    assert [lv.label for lv in result.levels] == CANONICAL
    np.testing.assert_array_equal(result.labels, spine(CANONICAL))
    assert [(c.kind, c.raw_label, c.label, c.voxels) for c in result.changes] == [
        ("relabelled", l4, l3, 3 * 4 * 30)]
    assert result.level(l3).raw_label == l3


def test_two_vertebrae_touching_where_the_model_missed_part_of_a_disc_are_split_at_the_disc_plane():
    labels = spine(CANONICAL)
    disc = ONT.by_level("L3/L4", "disc").label
    l3 = ONT.by_level("L3", "vertebra").label
    middle = labels[2]
    middle[middle == disc] = l3  # on the middle slice the disc was taken for bone
    result = postprocess(labels, {}, ONT, {}, grid())
    assert [lv.label for lv in result.levels] == CANONICAL
    l4 = ONT.by_level("L4", "vertebra").label
    assert result.level(l4).voxels > 3 * VERTEBRA_ROWS * 30  # it took the lower half of the missed disc
    assert result.level(l3).voxels > 3 * VERTEBRA_ROWS * 30
    assert (result.labels == disc).sum() == 2 * DISC_ROWS * 30  # the disc's two slices, merged as one


def _with_arches(labels_caudal_to_cranial: list[int]) -> np.ndarray:
    """Vertebral bodies (columns 4-23) each with an arch behind it: a pedicle at the body's height, then a
    spinous process that slopes down behind the disc below, as far as the next body's upper half."""
    labels = _spine(labels_caudal_to_cranial, (SLICES, ROWS, COLS), cols=slice(4, 24))
    out = labels.copy()
    for value in (s.label for s in ONT.of_kind("vertebra")):
        rows = np.flatnonzero((labels == value).any(axis=(0, 2)))
        if rows.size:
            out[1:4, rows[0]:rows[-1] + 1, 24:30] = value
            out[1:4, rows[0] + 8:rows[-1] + 9, 30:46] = value
    return out


def test_posterior_arches_below_the_next_disc_plane_keep_the_level_of_their_body():
    labels = _with_arches(CANONICAL)
    result = postprocess(labels, {}, ONT, {}, grid())
    assert [lv.label for lv in result.levels] == CANONICAL
    np.testing.assert_array_equal(result.labels, labels)
    assert result.changes == []


def test_posterior_arches_are_renamed_with_their_bodies_when_the_column_is_recounted():
    order = [s.label for s in ONT.caudal_to_cranial()]
    shifted = [order[0]] + order[3:13]
    result = postprocess(_with_arches(shifted), {}, ONT, {}, grid())
    np.testing.assert_array_equal(result.labels, _with_arches(CANONICAL))


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_counting_on_a_generated_studys_ground_truth_gives_back_the_ground_truth(seed, tmp_path):
    from model_export.data import read_generated_study
    from model_export.synth import SynthConfig, generate_study
    from model_export.synth.config import SMALL_TEST_CONFIG

    config = SynthConfig(use_spider=False, include_axial=False, include_localizer=False, **SMALL_TEST_CONFIG)
    generate_study(tmp_path / "study", seed=seed, config=config)
    case = read_generated_study(tmp_path / "study")
    result = postprocess(case.labels, {}, ONT, {}, case.grid())
    assert np.mean(result.labels == case.labels) > 0.999  # only one-voxel rims may go
    sizable = {int(v) for v, n in zip(*np.unique(case.labels, return_counts=True), strict=True) if v and n >= 100}
    assert sizable <= {lv.label for lv in result.levels}
    assert not [c for c in result.changes if c.kind == "relabelled"]


def test_every_labelled_voxel_is_either_delivered_or_reported_as_a_change():
    rng = np.random.default_rng(5)
    labels = _with_arches(CANONICAL)
    for _ in range(40):  # stray blobs of any structure label anywhere
        s, r, c = rng.integers(0, SLICES), rng.integers(0, ROWS - 6), rng.integers(0, COLS - 6)
        labels[s, r:r + rng.integers(1, 6), c:c + rng.integers(1, 6)] = rng.integers(1, 20)
    result = postprocess(labels, {}, ONT, {}, grid())
    removed = sum(c.voxels for c in result.changes if c.kind in ("dropped", "fragment_removed"))
    assert sum(lv.voxels for lv in result.levels) + removed == np.count_nonzero(labels)
    assert [lv.label for lv in result.levels] == CANONICAL


def test_vertebra_labels_painted_in_front_of_the_column_are_dropped():
    labels = _spine(CANONICAL, (SLICES, ROWS, COLS), cols=slice(20, 44))
    l3 = ONT.by_level("L3", "vertebra").label
    rows = np.flatnonzero((labels == l3).any(axis=(0, 2)))
    clean = labels.copy()
    labels[1:4, rows[0]:rows[-1] + 1, 0:9] = l3  # prevertebral soft tissue called L3, 9-16 mm in front
    result = postprocess(labels, {}, ONT, {}, grid())
    np.testing.assert_array_equal(result.labels, clean)
    assert [(c.kind, c.raw_label, c.reason) for c in result.changes] == [
        ("dropped", l3, "vertebra in front of the vertebral bodies")]


def test_a_disc_blob_inside_the_sacrum_is_no_level():
    labels = spine(CANONICAL)
    sacrum_rows = np.flatnonzero((labels == CANONICAL[0]).any(axis=(0, 2)))
    middle = sacrum_rows[len(sacrum_rows) // 2]
    labels[1:4, middle - 1:middle + 2, 15:35] = ONT.by_level("L5/S1", "disc").label
    result = postprocess(labels, {}, ONT, {}, grid())
    assert [lv.label for lv in result.levels] == CANONICAL  # not counted as L5/S1, so nothing shifts
    assert [(c.kind, c.voxels) for c in result.changes] == [("dropped", 3 * 3 * 20)]


def test_arch_labelled_as_the_level_above_the_column_but_behind_its_middle_is_not_delivered_as_that_level():
    """At the top of the field of view a spinous process may keep the label of the vertebra above the
    column; the same label behind L3 (as a model painted one on a real scan) is no such arch. Here it joins
    L3, the body level with it, and being detached from L3's own arch it goes as a fragment, on record."""
    labels = _with_arches(CANONICAL)
    l3, t12 = ONT.by_level("L3", "vertebra").label, ONT.by_level("T12", "vertebra").label
    rows = np.flatnonzero((labels[:, :, 24:30] == l3).any(axis=(0, 2)))
    labels[1:4, rows[0]:rows[0] + 6, 40:46] = t12
    result = postprocess(labels, {}, ONT, {}, grid())
    assert t12 not in {lv.label for lv in result.levels}
    assert not (result.labels == t12).any()
    assert [(c.kind, c.raw_label, c.voxels) for c in result.changes] == [("fragment_removed", t12, 3 * 6 * 6)]


def test_two_discs_joined_by_a_bridge_of_disc_voxels_are_split_by_their_labels_and_counted_apart():
    labels = spine(CANONICAL)
    low, high = ONT.by_level("L5/S1", "disc").label, ONT.by_level("L4/L5", "disc").label
    low_rows = np.flatnonzero((labels == low).any(axis=(0, 2)))
    high_rows = np.flatnonzero((labels == high).any(axis=(0, 2)))
    bridged = labels.copy()
    bridged[3, high_rows[-1]:low_rows[0], 38:40] = high  # down the back of L5 on one slice, as on a real scan
    result = postprocess(bridged, {}, ONT, {}, grid())
    assert [lv.label for lv in result.levels] == CANONICAL
    assert (result.labels[labels == low] == low).all()
    assert (result.labels[labels == high] == high).all()  # the bridge goes to whichever disc is nearer


def _one_level_up(labels: list[int]) -> list[int]:
    """Each disc and vertebra named as the next one up (the top ones dropped); the sacrum kept."""
    order = ONT.caudal_to_cranial()
    up = {}
    for kind in ("disc", "vertebra"):
        chain = [s.label for s in order if s.kind == kind]
        up.update(zip(chain[:-1], chain[1:], strict=True))
    return [up.get(v, v if ONT.by_label(v).kind == "sacrum" else 0) for v in labels]


def test_raw_naming_agreement_is_one_for_a_consistent_column_and_less_for_a_swapped_one():
    from service.infer.ordered_naming import ordered_components as _ordered_components
    from service.infer.ordered_naming import raw_naming_agreement

    l3, l4 = ONT.by_level("L3", "vertebra").label, ONT.by_level("L4", "vertebra").label
    for labels, expected_one in ((CANONICAL, True), ([{l3: l4, l4: l3}.get(v, v) for v in CANONICAL], False)):
        changes = []
        ordered, _ = _ordered_components(spine(labels), ONT, grid(), SPACING[0] * SPACING[1] * SLICE, changes)
        assert (raw_naming_agreement(ordered, changes) == 1.0) is expected_one


def test_a_column_whose_discs_the_model_found_patchily_keeps_the_names_it_gave_its_bodies():
    """As on real scans: only two discs found, three levels apart. Counting would take them for neighbours
    and rename the column; the model's own names are consistent and fit the column, so they are delivered."""
    labels = spine(CANONICAL)
    for disc in ONT.of_kind("disc"):
        if disc.level not in ("L4/L5", "L1/L2"):
            labels[labels == disc.label] = 0
    result = postprocess(labels, {}, ONT, {}, grid())
    assert [lv.label for lv in result.levels] == [v for v in CANONICAL if v in np.unique(labels)]
    np.testing.assert_array_equal(result.labels, labels)
    assert not [c for c in result.changes if c.kind == "relabelled"]


def test_counting_from_the_sacrum_still_decides_when_the_model_named_its_column_one_level_high(monkeypatch):
    import service.infer.postprocess as module

    shifted = spine(_one_level_up(CANONICAL))
    for trusted in (0.95, 0.5):  # however consistent the naming, it skips L5/S1 and L5 above the sacrum
        monkeypatch.setattr(module, "RAW_NAMING_TRUSTED", trusted)
        result = postprocess(shifted, {}, ONT, {}, grid())
        assert [lv.label for lv in result.levels][:3] == CANONICAL[:3]
        assert any(c.kind == "relabelled" and c.reason == "counted from the sacrum" for c in result.changes)
