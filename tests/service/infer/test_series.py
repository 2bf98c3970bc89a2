"""load_series and resample_onto: slice order by position, ITK-identical geometry, every transfer syntax."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from service.errors import InconsistentSeriesError, InferenceError, SeriesDecodeError
from service.infer.series import SeriesVolume, load_series, resample_onto
from tests.conftest import require_tool
from tests.service.encode.dicom_factory import Geometry, oblique, phantom, write_enhanced, write_series

SHAPE = (6, 24, 20)


@pytest.mark.parametrize("instance_order", ["ascending", "reversed", "shuffled"])
@pytest.mark.parametrize("geometry", [Geometry(), oblique(9.0)], ids=["sagittal", "oblique"])
def test_slices_sorted_by_position_along_normal_whatever_the_instance_numbers(
    tmp_path, instance_order, geometry
):
    volume = phantom(SHAPE)
    paths = write_series(tmp_path, volume, geometry, instance_order=instance_order, seed=3)

    series = load_series(paths)

    np.testing.assert_array_equal(series.pixels, volume.astype(np.float32))
    assert series.pixels.dtype == np.float32
    np.testing.assert_allclose(series.origin, geometry.position(0), atol=1e-5)
    np.testing.assert_allclose(series.normal, geometry.normal, atol=1e-6)
    assert series.slice_spacing == pytest.approx(4.0, abs=1e-5)
    positions = [np.asarray(ds.ImagePositionPatient, dtype=float) @ series.normal for ds in series.datasets]
    assert positions == sorted(positions)


def test_slices_stored_against_the_normal_come_out_ascending_along_it(tmp_path):
    volume = phantom(SHAPE)
    geometry = Geometry(slice_spacing=-4.0)  # slice k+1 lies 4 mm *against* row x col
    series = load_series(write_series(tmp_path, volume, geometry))
    np.testing.assert_array_equal(series.pixels, volume[::-1].astype(np.float32))
    np.testing.assert_allclose(series.origin, geometry.position(SHAPE[0] - 1), atol=1e-5)


@pytest.mark.parametrize("geometry", [Geometry(), oblique(11.0)], ids=["sagittal", "oblique"])
def test_geometry_equals_simpleitk_image_series_reader(tmp_path, geometry):
    volume = phantom(SHAPE)
    write_series(tmp_path, volume, geometry, instance_order="shuffled", rescale=(2.0, -10.0))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    expected = reader.Execute()

    ours = load_series(sorted(tmp_path.glob("*.dcm"))).to_sitk()

    np.testing.assert_allclose(ours.GetOrigin(), expected.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ours.GetSpacing(), expected.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(ours.GetDirection(), expected.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(expected), atol=1e-3)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    volume = phantom(SHAPE)
    series = load_series(write_series(tmp_path, volume, rescale=(0.5, 7.0)))
    np.testing.assert_allclose(series.pixels, volume * 0.5 + 7.0, rtol=1e-6)


def _grid_like(series: SeriesVolume, shift_mm: np.ndarray) -> SeriesVolume:
    return dataclasses.replace(series, origin=series.origin + shift_mm, pixels=np.zeros_like(series.pixels))


def test_resampling_a_volume_onto_itself_is_the_identity(tmp_path):
    series = load_series(write_series(tmp_path, phantom(SHAPE), oblique(5.0)))
    np.testing.assert_allclose(resample_onto(series, series), series.pixels, atol=1e-3)


def test_resampling_onto_a_shifted_grid_shifts_the_pixels_and_fills_zero_outside(tmp_path):
    series = load_series(write_series(tmp_path, phantom(SHAPE), oblique(5.0)))
    # Reference grid: two columns further along the row direction and one slice further along the normal.
    shift = 2 * series.pixel_spacing[1] * series.row_dir + series.slice_spacing * series.normal
    out = resample_onto(series, _grid_like(series, shift))
    np.testing.assert_allclose(out[:-1, :, :-2], series.pixels[1:, :, 2:], atol=1e-2)
    assert not out[-1].any() and not out[:, :, -2:].any()


def test_nearest_neighbour_resampling_keeps_label_values(tmp_path):
    series = load_series(write_series(tmp_path, phantom(SHAPE)))
    labels = dataclasses.replace(series, pixels=(series.pixels % 5).astype(np.float32))
    half_pixel = 0.4 * series.pixel_spacing[0] * series.col_dir
    out = resample_onto(labels, _grid_like(labels, half_pixel), order=0)
    assert set(np.unique(out)) <= {0.0, 1.0, 2.0, 3.0, 4.0}


@pytest.mark.parametrize(
    "transfer_syntax",
    [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless],
    ids=["implicit", "deflate", "rle", "jpeg-ls", "jpeg2000"],
)
def test_compressed_transfer_syntaxes_decode_to_the_same_pixels(tmp_path, transfer_syntax):
    volume = phantom((3, 40, 36))  # openjpeg's default 6 resolutions need 32 pixels or more
    paths = write_series(tmp_path, volume, transfer_syntax=transfer_syntax, rescale=(1.0, -5.0))
    assert (
        str(pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID) == transfer_syntax
    )
    series = load_series(paths)
    np.testing.assert_array_equal(series.pixels, volume.astype(np.float32) - 5.0)


@pytest.mark.parametrize(
    ("tool", "args", "syntax"),
    [("dcmcjpeg", ["+e1"], "1.2.840.10008.1.2.4.70"), ("dcmcjpls", ["+el"], "1.2.840.10008.1.2.4.80")],
    ids=["jpeg-lossless-dcmtk", "jpeg-ls-dcmtk"],
)
def test_series_compressed_by_dcmtk_decode_to_the_same_pixels(tmp_path, tool, args, syntax):
    exe = require_tool(tool)
    volume = phantom((3, 32, 28))
    plain = write_series(tmp_path / "plain", volume)
    (tmp_path / "packed").mkdir()
    packed = []
    for path in plain:
        target = tmp_path / "packed" / path.name
        subprocess.run([exe, *args, str(path), str(target)], check=True, capture_output=True)
        packed.append(target)
    assert str(pydicom.dcmread(packed[0], stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    np.testing.assert_array_equal(load_series(packed).pixels, volume.astype(np.float32))


def test_enhanced_mr_multiframe_is_one_volume_sorted_by_frame_position(tmp_path):
    volume = phantom(SHAPE)
    geometry = oblique(6.0)
    path = write_enhanced(tmp_path, volume, geometry, frame_order=[3, 0, 5, 1, 4, 2], rescale=(2.0, 1.0))

    series = load_series([path])

    np.testing.assert_allclose(series.pixels, volume * 2.0 + 1.0)
    assert series.frame_numbers == [2, 4, 6, 1, 5, 3]
    assert len(series.source_datasets) == 1
    np.testing.assert_allclose(series.origin, geometry.position(0), atol=1e-5)
    assert series.slice_spacing == pytest.approx(4.0, abs=1e-5)


def test_enhanced_mr_in_jpeg2000_decodes(tmp_path):
    volume = phantom((4, 40, 36))
    path = write_enhanced(tmp_path, volume, transfer_syntax=JPEG2000Lossless)
    np.testing.assert_array_equal(load_series([path]).pixels, volume.astype(np.float32))


def test_mixed_matrix_size_is_inconsistent_and_names_the_file(tmp_path):
    paths = write_series(tmp_path / "a", phantom(SHAPE))
    odd = write_series(tmp_path / "b", phantom((1, 30, 20)), Geometry(origin=(50.0, -100.0, 120.0)))
    with pytest.raises(InconsistentSeriesError, match=odd[0].name):
        load_series([*paths, *odd])


def test_mixed_orientation_is_inconsistent(tmp_path):
    paths = write_series(tmp_path / "a", phantom(SHAPE))
    odd = write_series(tmp_path / "b", phantom((1, *SHAPE[1:])), oblique(20.0))
    with pytest.raises(InconsistentSeriesError, match="orientation"):
        load_series([*paths, *odd])


def test_two_stacks_at_the_same_positions_are_inconsistent(tmp_path):
    paths = write_series(tmp_path / "a", phantom(SHAPE)) + write_series(tmp_path / "b", phantom(SHAPE))
    with pytest.raises(InconsistentSeriesError, match="same position"):
        load_series(paths)


def test_a_missing_slice_is_inconsistent(tmp_path):
    paths = write_series(tmp_path, phantom(SHAPE))
    with pytest.raises(InconsistentSeriesError, match="missing slices"):
        load_series([p for p in paths if p != paths[2]])


def test_a_series_mostly_of_garbage_raises_decode_error_with_the_file_name(tmp_path):
    paths = write_series(tmp_path, phantom((1, 40, 36)))
    bad = tmp_path / "1.2.3.4.dcm"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(SeriesDecodeError, match=r"1\.2\.3\.4\.dcm") as info:
        load_series([*paths, bad])
    assert isinstance(info.value, InferenceError)


def test_one_garbage_file_in_a_usable_series_is_left_out_and_named(tmp_path):
    paths = write_series(tmp_path, phantom(SHAPE))
    bad = tmp_path / "1.2.3.4.dcm"
    bad.write_bytes(b"\x00" * 10)
    volume = load_series([*paths, bad])
    assert volume.shape == SHAPE
    assert len(volume.dropped) == 1 and "1.2.3.4.dcm" in volume.dropped[0] and "left out" in volume.dropped[0]


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_an_undecodable_middle_slice_becomes_blank_where_its_header_places_it(tmp_path):
    shape = (5, 40, 36)  # large enough for JPEG 2000's resolution levels
    volume_in = phantom(shape)
    paths = write_series(tmp_path, volume_in, transfer_syntax=JPEG2000Lossless)
    middle = shape[0] // 2
    target = next(p for p in paths if pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber == middle + 1)
    data = target.read_bytes()
    target.write_bytes(data[: len(data) - 300])
    volume = load_series(paths)
    assert volume.shape == shape
    assert not volume.pixels[middle].any()
    np.testing.assert_array_equal(volume.pixels[middle - 1], volume_in[middle - 1].astype(np.float32))
    assert len(volume.dropped) == 1 and target.name in volume.dropped[0] and "blank slice" in volume.dropped[0]


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_compressed_pixel_data_raises_decode_error(tmp_path):
    path = write_series(tmp_path, phantom((1, 40, 36)), transfer_syntax=JPEG2000Lossless)[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 300])
    with pytest.raises(SeriesDecodeError, match=path.name):
        load_series([path])


def test_empty_series_is_inconsistent():
    with pytest.raises(InconsistentSeriesError):
        load_series([])


def test_index_to_patient_matches_the_writer(tmp_path):
    geometry = oblique(8.0)
    series = load_series(write_series(tmp_path, phantom(SHAPE), geometry))
    k, r, c = np.array([2.0, 5.0]), np.array([3.0, 10.0]), np.array([7.0, 1.0])
    expected = geometry.index_to_patient(k, r, c).T
    np.testing.assert_allclose(series.index_to_patient(np.stack([k, r, c], axis=1)), expected, atol=1e-5)


def test_loading_keeps_headers_only(tmp_path: Path):
    series = load_series(write_series(tmp_path, phantom(SHAPE)))
    assert all("PixelData" not in ds for ds in series.datasets)
