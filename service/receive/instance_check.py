"""Is a received Part-10 file complete and sound? Checked from the file, without holding its pixels.

pydicom reads a truncated stream without complaint (a short last value, or an encapsulated Pixel Data whose
delimiter never came silently dropped), so completeness is checked here: every defined-length value has its
declared length, the last element ends where the file ends, the identifying UIDs are there, an image
storage SOP class carries pixel data, and native pixel data holds what its header says. Values longer than
DEFER_BYTES (native pixel data above all) are checked by their offsets and never read, so an instance of
any size costs about the same memory; encapsulated (compressed) pixel data has undefined length and is
read once to find its end.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from service.errors import NotDicomError, UndecodableDatasetError

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
DEFER_BYTES = 256 * 1024
UNDEFINED_LENGTH = 0xFFFFFFFF


def check_part10_file(path: Path, size: int) -> Dataset:
    """The file's dataset (large values deferred), checked complete; UndecodableDatasetError says why not."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise NotDicomError("not a DICOM Part-10 stream (no 'DICM' prefix after the preamble)")
    try:
        ds = pydicom.dcmread(path, force=False, defer_size=DEFER_BYTES)
        end = None
        for raw in (ds.get_item(tag, keep_deferred=True) for tag in ds.keys()):  # raw elements, stream order
            if not isinstance(raw, RawDataElement) or raw.length == UNDEFINED_LENGTH:
                # already converted by pydicom while reading (Specific Character Set) or a sequence
                end = None
                continue
            if raw.value is not None and len(raw.value) != raw.length:
                raise UndecodableDatasetError(
                    f"element {raw.tag} is truncated ({len(raw.value)} of {raw.length} bytes)"
                )
            end = raw.value_tell + raw.length
        deflated = ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
        if end is not None and end != size and not deflated:  # offsets of a deflated stream are inflated
            if end > size:
                raise UndecodableDatasetError(f"stream ends inside an element ({end - size} bytes missing)")
            raise UndecodableDatasetError(f"stream ends inside an element ({size - end} stray bytes)")
        for tag in list(ds.keys()):  # converts every element read (not the deferred ones): garbage raises here
            raw = ds.get_item(tag, keep_deferred=True)
            if not (isinstance(raw, RawDataElement) and raw.value is None):
                ds[tag]
        transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
    except UndecodableDatasetError:
        raise
    except Exception as exc:  # pydicom raises many types on garbage; all mean "cannot understand"
        raise UndecodableDatasetError(f"dataset could not be parsed ({type(exc).__name__})") from exc
    if transfer_syntax is None:
        raise UndecodableDatasetError("file meta has no TransferSyntaxUID")
    for keyword in REQUIRED:
        if keyword not in ds:
            raise UndecodableDatasetError(
                f"dataset has no {keyword} (truncated, or not a composite instance)"
            )
    has_pixels = any(k in ds for k in PIXEL_KEYWORDS)
    if not has_pixels and ("Rows" in ds or "Image Storage" in UID(str(ds.SOPClassUID)).name):
        # pydicom drops an encapsulated Pixel Data whose sequence delimiter never came: truncated
        raise UndecodableDatasetError("image instance without complete pixel data (truncated?)")
    if "PixelData" in ds:
        _check_pixel_data_length(ds, UID(str(transfer_syntax)))
    return ds


def _value_length(ds: Dataset, keyword: str) -> int:
    """An element's value length without reading a deferred value."""
    element = ds.get_item(keyword, keep_deferred=True)
    if isinstance(element, RawDataElement):
        return len(element.value) if element.value is not None else int(element.length)
    return len(element.value)


def _check_pixel_data_length(ds: Dataset, transfer_syntax: UID) -> None:
    """Native pixel data must hold what Rows, Columns, samples, frames and bits allocated say.

    An instance whose header promises more pixels than it carries cannot be decoded later; acknowledging it
    would keep the sender from ever sending it again, so it is refused now. Encapsulated (compressed) pixel
    data has no fixed length; its decoder judges it in the worker."""
    if transfer_syntax.is_encapsulated:
        return
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel") or 1)
        frames = int(ds.get("NumberOfFrames") or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UndecodableDatasetError(f"image pixel module incomplete or malformed ({type(exc).__name__})") from exc
    if min(rows, columns, samples, frames) < 1 or bits not in (1, 8, 16, 32, 64):
        raise UndecodableDatasetError(
            f"image pixel module out of range: {rows} x {columns}, {samples} samples, {frames} frames, "
            f"{bits} bits allocated")
    pixels = rows * columns * samples * frames
    expected = (pixels + 7) // 8 if bits == 1 else pixels * bits // 8
    actual = _value_length(ds, "PixelData")
    if actual < expected:
        raise UndecodableDatasetError(
            f"pixel data holds {actual} bytes; {rows} x {columns} x {samples} samples x {frames} frames at "
            f"{bits} bits need {expected}")
