"""The spool on a real filesystem: layout by validated UIDs, atomic writes, refusals that leave nothing."""

from __future__ import annotations

import errno
import io
import os
import time

import pytest
from pydicom.uid import RLELossless, generate_uid

from service.errors import InvalidUIDError, SpoolFullError, UndecodableDatasetError
from service.receive.spool import Spool
from service.receive.uids import is_valid_uid, validate_uid
from tests.service.receive.study_factory import make_instance, make_sr, sag_t2


def encode(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def instance(study_uid: str | None = None, **overrides):
    ds = make_instance(study_uid or generate_uid(), generate_uid(), sag_t2(), 0)
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    return ds


def files_under(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2", "0", "1.2.3.0", "1.02.3", "9" * 64])
def test_uid_grammar_accepts_digits_and_dots(uid):
    assert validate_uid(uid, "UID") == uid


@pytest.mark.parametrize(
    "uid", ["1.2/../../x", "..", "1..2", ".1", "1.", "1.2.a", "1.2 3", "1.2\\3", "/etc", "9" * 65, "", None]
)
def test_uid_grammar_refuses_anything_that_could_steer_a_path(uid):
    assert not is_valid_uid(uid)


def test_stores_the_file_byte_for_byte_at_its_uid_path(tmp_path):
    spool = Spool(tmp_path / "spool", fsync=True)
    data = encode(instance())
    stored = spool.store_file_bytes(data)
    assert stored.path == tmp_path / "spool" / stored.study_uid / stored.series_uid / f"{stored.sop_uid}.dcm"
    assert stored.path.read_bytes() == data and not stored.duplicate and not stored.ignored
    assert [f.sop_uid for f in spool.instances(stored.study_uid)] == [stored.sop_uid]
    assert spool.last_received(stored.study_uid) is not None


def test_compressed_data_is_kept_as_received(tmp_path):
    ds = instance()
    ds.compress(RLELossless)
    data = encode(ds)
    stored = Spool(tmp_path).store_file_bytes(data)
    assert stored.transfer_syntax_uid == RLELossless and stored.path.read_bytes() == data


def test_a_duplicate_instance_is_idempotent(tmp_path):
    spool = Spool(tmp_path)
    data = encode(instance())
    first = spool.store_file_bytes(data)
    mtime = first.path.stat().st_mtime_ns
    again = spool.store_file_bytes(data)
    assert again.duplicate and again.path == first.path and first.path.stat().st_mtime_ns == mtime
    assert len(files_under(tmp_path / first.study_uid)) == 2  # the instance and the .received marker


def test_non_mr_objects_are_kept_and_flagged_ignored(tmp_path):
    stored = Spool(tmp_path).store_file_bytes(encode(make_sr(generate_uid())))
    assert stored.ignored and stored.path.exists()


@pytest.mark.parametrize(
    "keyword, uid",
    [
        ("StudyInstanceUID", "1.2/../../x"),
        ("SeriesInstanceUID", "../.."),
        ("SOPInstanceUID", "1.2.3/../../../evil"),
    ],
)
def test_a_uid_that_could_escape_the_spool_is_refused_and_nothing_is_written(tmp_path, keyword, uid):
    root = tmp_path / "a" / "spool"
    spool = Spool(root)
    with pytest.raises(InvalidUIDError):
        spool.store_file_bytes(encode(instance(**{keyword: uid})))
    assert files_under(tmp_path) == []


def test_below_the_disk_reserve_is_spool_full_and_leaves_no_file(tmp_path):
    spool = Spool(tmp_path, reserve_bytes=10**18)
    with pytest.raises(SpoolFullError):
        spool.store_file_bytes(encode(instance()))
    assert files_under(tmp_path) == []


def test_disk_full_while_writing_is_spool_full_and_leaves_no_partial_file(tmp_path, monkeypatch):
    def no_space(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    spool = Spool(tmp_path)
    monkeypatch.setattr(os, "write", no_space)  # the kernel's answer on a full disk, injected
    with pytest.raises(SpoolFullError):
        spool.store_file_bytes(encode(instance()))
    monkeypatch.undo()
    assert [p for p in files_under(tmp_path) if p.suffix in (".dcm", ".tmp")] == []


@pytest.mark.parametrize("cut", [-100, -9, 0.5, 0.3])
def test_truncated_native_and_encapsulated_data_is_undecodable(tmp_path, cut):
    for compress in (False, True):
        ds = instance()
        if compress:
            ds.compress(RLELossless)
        data = encode(ds)
        end = len(data) + cut if isinstance(cut, int) else int(len(data) * cut)
        with pytest.raises(UndecodableDatasetError):
            Spool(tmp_path).store_file_bytes(data[:end])
    assert [p for p in files_under(tmp_path) if p.suffix == ".dcm"] == []


@pytest.mark.parametrize("rows, columns", [(65535, 65535), (257, 256)])
def test_store_refuses_pixel_data_shorter_than_its_header_says(tmp_path, rows, columns):
    ds = instance(Rows=rows, Columns=columns)
    with pytest.raises(UndecodableDatasetError, match="pixel data holds"):
        Spool(tmp_path).store_file_bytes(encode(ds))
    assert [p for p in files_under(tmp_path) if p.suffix == ".dcm"] == []


def test_store_accepts_pixel_data_with_its_even_padding(tmp_path):
    ds = instance()
    ds.PixelData = ds.PixelData + b"\0\0"
    assert Spool(tmp_path).store_file_bytes(encode(ds)).size > 0


@pytest.mark.parametrize(
    "data",
    [b"", b"not dicom at all", b"\0" * 128 + b"DICM" + os.urandom(2000), encode(instance())[:140]],
)
def test_garbage_is_undecodable(tmp_path, data):
    with pytest.raises(UndecodableDatasetError):
        Spool(tmp_path).store_file_bytes(data)


def test_store_dataset_encodes_with_file_meta(tmp_path):
    ds = instance()
    stored = Spool(tmp_path).store_dataset(ds)
    assert stored.sop_uid == ds.SOPInstanceUID and stored.path.read_bytes() == encode(ds)


def test_listing_skips_temp_files_and_stale_ones_are_removed(tmp_path):
    spool = Spool(tmp_path)
    stored = spool.store_file_bytes(encode(instance()))
    stale = stored.path.parent / ".x.abc.tmp"
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    young = stored.path.parent / ".y.abc.tmp"
    young.write_bytes(b"partial")
    assert [f.sop_uid for f in spool.instances(stored.study_uid)] == [stored.sop_uid]
    assert spool.remove_stale_temp_files(older_than_s=3600) == 1
    assert not stale.exists() and young.exists()


def test_content_digest_changes_when_an_instance_is_added(tmp_path):
    spool = Spool(tmp_path)
    study = generate_uid()
    spool.store_file_bytes(encode(instance(study)))
    before = spool.content_digest(study)
    spool.store_file_bytes(encode(instance(study)))
    assert spool.content_digest(study) != before
    spool.write_assembled(study, before)
    assert spool.read_assembled(study) == before
