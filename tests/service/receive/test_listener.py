"""The listener on localhost with real peers: dcmtk storescu/echoscu and a pynetdicom SCU."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from service.config import Settings
from service.receive.listener import start_listener
from service.receive.spool import Spool
from tests.conftest import require_tool
from tests.service.receive.study_factory import make_instance, sag_t1_flair, sag_t2, write_study

pytestmark = pytest.mark.integration
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture
def start(tmp_path):
    """Start a listener on a free port with settings overrides; stopped at teardown."""
    running = []

    def _start(**overrides):
        settings = Settings(**{"data_dir": tmp_path / "var", "disk_reserve_mb": 0, **overrides})
        listener = start_listener(settings, Spool.from_settings(settings), host="127.0.0.1", port=0)
        running.append(listener)
        return listener, settings

    yield _start
    for listener in running:
        listener.stop()


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the file meta group: what travels in a C-STORE, byte for byte."""
    with open(path, "rb") as f:
        pydicom.filereader.read_preamble(f, False)
        pydicom.filereader._read_file_meta_info(f)
        return f.read()


def spooled(settings: Settings) -> dict[str, Path]:
    return {p.stem: p for p in settings.spool_dir.rglob("*.dcm")}


def storescu(
    port: int, *files: Path, calling: str = "PACS", options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool("storescu"), *options, "-aet", calling, "-aec", "LUMBAR_AI", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=60,
    )


def test_echoscu_succeeds(start):
    listener, _ = start()
    result = subprocess.run(
        [require_tool("echoscu"), "-aec", "LUMBAR_AI", "127.0.0.1", str(listener.port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_storescu_study_is_on_disk_byte_for_byte(start, tmp_path):
    listener, settings = start()
    files = write_study(tmp_path / "in", [sag_t1_flair(n=5), sag_t2(n=5)])
    result = storescu(listener.port, *files)
    assert result.returncode == 0, result.stderr
    on_disk = spooled(settings)
    assert len(on_disk) == len(files)
    for f in files:
        sop = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(on_disk[sop]) == dataset_bytes(f)
    assert listener.counters.stored == len(files)


def _compressed_copies(src: list[Path], out: Path) -> dict[str, list[Path]]:
    """The same instances in JPEG 2000 (pydicom + openjpeg: Debian's dcmtk has no dcmcjp2k), JPEG-LS,
    RLE and JPEG lossless (dcmtk's dcmcjpls, dcmcrle, dcmcjpeg) where available."""
    out.mkdir()
    made: dict[str, list[Path]] = {JPEG2000Lossless: []}
    for i, f in enumerate(src):
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.compress(JPEG2000Lossless)
        target = out / f"j2k_{i}.dcm"
        ds.save_as(target, enforce_file_format=True)
        made[JPEG2000Lossless].append(target)
    for tool, syntax in (
        ("dcmcjpls", JPEGLSLossless),
        ("dcmcrle", RLELossless),
        ("dcmcjpeg", JPEGLosslessSV1),
    ):
        if shutil.which(tool) is None:
            continue
        made[syntax] = []
        for i, f in enumerate(src):
            ds = pydicom.dcmread(f)
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            plain = out / f"{tool}_{i}_in.dcm"
            ds.save_as(plain, enforce_file_format=True)
            target = out / f"{tool}_{i}.dcm"
            subprocess.run([tool, str(plain), str(target)], check=True, capture_output=True, timeout=30)
            made[syntax].append(target)
    return made


# storescu options proposing a compressed syntax and all uncompressed ones in one context (+C), as PACS do
PROPOSE = {JPEG2000Lossless: "-xv", JPEGLSLossless: "-xt", RLELossless: "-xr", JPEGLosslessSV1: "-xs"}


def test_jpeg2000_jpegls_jpeg_lossless_and_rle_arrive_compressed_byte_for_byte(start, tmp_path):
    listener, settings = start()
    plain = write_study(tmp_path / "in", [sag_t2(n=2)])
    made = _compressed_copies(plain, tmp_path / "compressed")
    for syntax, group in made.items():
        result = storescu(listener.port, *group, options=(PROPOSE[syntax], "+C"))
        assert result.returncode == 0, result.stderr
    on_disk = spooled(settings)
    for syntax, group in made.items():
        for f in group:
            stored = on_disk[pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID]
            assert pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
            assert dataset_bytes(stored) == dataset_bytes(f)


def _associate(port: int, calling: str = "PACS", called: str = "LUMBAR_AI"):
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    contexts = [
        build_context(MRImageStorage, ExplicitVRLittleEndian),
        build_context(MRImageStorage, ImplicitVRLittleEndian),
        build_context(Verification),
    ]
    return ae.associate("127.0.0.1", port, contexts, ae_title=called)


def _rejection(assoc) -> tuple[int, int, int]:
    rj = assoc.acceptor.primitive
    return rj.result, rj.result_source, rj.diagnostic


def test_a_calling_ae_not_on_the_list_is_refused_with_its_reason(start):
    listener, _ = start(allowed_calling_aets=["PACS"])
    refused = _associate(listener.port, calling="INTRUDER")
    assert refused.is_rejected and _rejection(refused) == (1, 1, 3)  # permanent, user, calling AE unknown
    result = subprocess.run(
        [require_tool("echoscu"), "-aet", "INTRUDER", "-aec", "LUMBAR_AI", "127.0.0.1", str(listener.port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=30,
    )
    assert result.returncode != 0
    allowed = _associate(listener.port, calling="PACS")
    assert allowed.is_established
    allowed.release()


def test_a_wrong_called_ae_is_refused(start):
    listener, _ = start()
    refused = _associate(listener.port, called="SOMEONE_ELSE")
    assert refused.is_rejected and _rejection(refused) == (1, 1, 7)


def test_an_address_outside_the_ip_allow_list_is_refused(start):
    listener, _ = start(allowed_ips=["10.0.0.0/8"])
    refused = _associate(listener.port)
    assert refused.is_rejected and _rejection(refused) == (1, 1, 1)
    open_listener, _ = start(allowed_ips=["127.0.0.0/8"])
    allowed = _associate(open_listener.port)
    assert allowed.is_established
    allowed.release()


def test_associations_beyond_the_cap_are_refused_as_transient(start):
    listener, _ = start(max_associations=1)
    first = _associate(listener.port)
    assert first.is_established
    second = _associate(listener.port)
    assert second.is_rejected and _rejection(second) == (2, 3, 2)  # transient, presentation, local limit
    first.release()


def _send_file(assoc, path: Path) -> int:
    """Send a file's bytes as they are (pynetdicom then does not decode or re-encode them)."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False


def test_truncated_and_garbage_data_get_c210_and_the_association_carries_on(start, tmp_path):
    listener, settings = start()
    (good,) = write_study(tmp_path / "in", [sag_t2(n=1)])
    data = good.read_bytes()
    meta_end = len(data) - len(dataset_bytes(good))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 700])
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(data[:meta_end] + b"\x08\x00\x18\x00UI\xff\x7f" + os.urandom(1500))
    assoc = _associate(listener.port)
    assert assoc.is_established
    try:
        assert _send_file(assoc, truncated) == 0xC210
        assert _send_file(assoc, garbage) == 0xC210
        assert _send_file(assoc, good) == 0x0000
        assert assoc.is_established
    finally:
        assoc.release()
    assert len(spooled(settings)) == 1


def test_pixel_data_shorter_than_its_header_gets_c210_and_nothing_is_spooled(start):
    listener, settings = start()
    ds = make_instance(generate_uid(), generate_uid(), sag_t2(), 0)
    ds.Rows = ds.Columns = 65535
    assoc = _associate(listener.port)
    try:
        status = assoc.send_c_store(ds).Status
    finally:
        assoc.release()
    assert status == 0xC210
    assert spooled(settings) == {}


def test_an_instance_over_the_size_limit_gets_c210_and_a_smaller_one_is_stored(start):
    listener, settings = start(max_instance_mb=1)
    big = make_instance(generate_uid(), generate_uid(), sag_t2(), 0)
    big.Rows, big.Columns = 1024, 1024
    big.PixelData = bytes(1024 * 1024 * 2)  # 2 MiB of native pixel data
    small = make_instance(generate_uid(), generate_uid(), sag_t2(), 0)
    assoc = _associate(listener.port)
    try:
        assert assoc.send_c_store(big).Status == 0xC210
        assert assoc.send_c_store(small).Status == 0x0000
    finally:
        assoc.release()
    assert list(spooled(settings)) == [small.SOPInstanceUID]
    assert not any((settings.spool_dir / ".incoming").iterdir())


@pytest.mark.parametrize(
    "keyword, uid",
    [
        ("StudyInstanceUID", "1.2/../../x"),
        ("SeriesInstanceUID", "../../.."),
        ("SOPInstanceUID", "1.2/../../../y"),
    ],
)
def test_uids_that_could_escape_the_spool_never_do(start, tmp_path, keyword, uid):
    listener, settings = start()
    ds = make_instance(generate_uid(), generate_uid(), sag_t2(), 0)
    setattr(ds, keyword, uid)
    assoc = _associate(listener.port)
    try:
        status = assoc.send_c_store(ds).Status
    finally:
        assoc.release()
    assert status == 0xC210
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == []


def test_disk_below_the_reserve_gets_a700_and_no_file(start, tmp_path):
    listener, settings = start(disk_reserve_mb=10**9)
    ds = make_instance(generate_uid(), generate_uid(), sag_t2(), 0)
    assoc = _associate(listener.port)
    try:
        assert assoc.send_c_store(ds).Status == 0xA700
        assert assoc.send_c_echo().Status == 0x0000  # still there for the next try
    finally:
        assoc.release()
    assert spooled(settings) == {}


def test_non_image_objects_are_accepted_and_counted_ignored(start):
    from pynetdicom.sop_class import BasicTextSRStorage  # type: ignore[attr-defined]

    from tests.service.receive.study_factory import make_sr

    listener, settings = start()
    ae = AE(ae_title="PACS")
    assoc = ae.associate(
        "127.0.0.1", listener.port, [build_context(BasicTextSRStorage)], ae_title="LUMBAR_AI"
    )
    try:
        assert assoc.send_c_store(make_sr(generate_uid())).Status == 0x0000
    finally:
        assoc.release()
    assert listener.counters.ignored == 1 and len(spooled(settings)) == 1


def test_a_duplicate_send_is_acknowledged_and_stored_once(start, tmp_path):
    listener, settings = start()
    files = write_study(tmp_path / "in", [sag_t2(n=3)])
    assert storescu(listener.port, *files).returncode == 0
    assert storescu(listener.port, *files).returncode == 0
    assert len(spooled(settings)) == 3 and listener.counters.duplicates == 3


def test_tls_association_with_a_certificate(start, tmp_path):
    import ssl

    openssl = require_tool("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    listener, settings = start(tls_cert=cert, tls_key=key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    client.check_hostname = False
    ae = AE(ae_title="PACS")
    assoc = ae.associate(
        "127.0.0.1",
        listener.port,
        [build_context(MRImageStorage)],
        ae_title="LUMBAR_AI",
        tls_args=(client, None),
    )
    assert assoc.is_established
    try:
        ds = make_instance(generate_uid(), generate_uid(), sag_t2(), 0)
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    plain = _associate(listener.port)  # a peer speaking plain TCP to a TLS port gets nowhere
    assert not plain.is_established
    assert len(spooled(settings)) == 1


def test_accepted_sockets_have_tcp_nodelay_and_share_the_supported_contexts(start):
    import socket

    listener, _ = start()
    assoc = _associate(listener.port)
    try:
        (accepted,) = listener.server.active_associations
        assert accepted.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert accepted.acceptor.supported_contexts is listener.server.contexts  # not a per-association copy
    finally:
        assoc.release()
