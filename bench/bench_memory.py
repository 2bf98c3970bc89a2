"""Peak memory of `lumbar-ai listen` and `lumbar-ai api` under large instances, zip bombs and large uploads.

Listener: ``--parallel`` dcmtk storescu associations at once, each sending one native instance of
``--instance-mb`` (a multi-frame MR), acknowledged only after fsync as always. API: three zip bombs (a
small zip whose one member expands to ``--bomb-mb``) and three plain uploads of ``--upload-mb`` at once.
Each process's peak resident memory (VmHWM) is printed, with its ratio to the bytes in flight: a receiver
that held each instance in memory would be at 1.0 or more. Targets: listener below 500 MB with 16 x 200 MB,
API below 300 MB with three bombs and three 1.9 GB uploads.

    .venv/bin/python bench/bench_memory.py [--parallel 16] [--instance-mb 200] [--bomb-mb 1024] [--upload-mb 1900]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_receive import DCMTK_ENV, ROOT, free_port, start_ours, stop, wait_for_port  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def large_instance(path: Path, megabytes: int) -> Path:
    """A native multi-frame MR instance of about ``megabytes`` (512 x 512 x 16 bit frames)."""
    frames = max(1, megabytes * 1024 * 1024 // (512 * 512 * 2))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "MR", "SAG T2 BENCH", 3, 1
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(0).integers(0, 4000, (frames, 512, 512), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def bench_listener(work: Path, parallel: int, instance_mb: int) -> None:
    sources = [large_instance(work / f"big_{i}.dcm", instance_mb) for i in range(parallel)]
    port = free_port()
    (work / "listener").mkdir(exist_ok=True)
    proc = start_ours(work / "listener", port, fsync=True)
    try:
        wait_for_port(port, proc)
        idle = peak_rss_mb(proc.pid)
        procs = [subprocess.Popen(["storescu", "-aec", "LUMBAR_AI", "127.0.0.1", str(port), str(p)], env=DCMTK_ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for p in sources]
        failed = [p for p in procs if p.wait(900) != 0]
        peak = peak_rss_mb(proc.pid)
    finally:
        stop(proc)
    in_flight = sum(p.stat().st_size for p in sources) / 2**20
    stored = len(list((work / "listener").rglob("*.dcm")))
    print(f"listener: {parallel} x {instance_mb} MB at once: peak RSS {peak:.0f} MB (idle {idle:.0f}), "
          f"{stored} of {parallel} stored, {len(failed)} storescu failures; "
          f"(peak - idle) / bytes in flight = {(peak - idle) / in_flight:.3f}")
    for p in sources:
        p.unlink()


def bench_api(work: Path, bomb_mb: int, upload_mb: int) -> None:
    import requests

    port = free_port()
    key = "bench-key-0123456789abcdef"
    env = {**os.environ, "LUMBAR_AI_DATA_DIR": str(work / "api"), "LUMBAR_AI_API_KEYS": f'["{key}"]',
           "LUMBAR_AI_DISK_RESERVE_MB": "0", "LUMBAR_AI_MAX_UPLOAD_MB": str(max(bomb_mb, upload_mb) + 10),
           "LUMBAR_AI_STREAM_PREFIX": f"bench-{os.getpid()}", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("bomb.dcm", "w", force_zip64=True) as member:
            for _ in range(bomb_mb):
                member.write(bytes(1 << 20))
    plain = work / "plain.dcm"
    with open(plain, "wb") as fh:
        for _ in range(upload_mb):
            fh.write(bytes(1 << 20))
    try:
        for _ in range(100):
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        idle = peak_rss_mb(proc.pid)
        statuses: list[int] = []

        def post(name: str, body) -> None:
            response = requests.post(f"http://127.0.0.1:{port}/studies", headers={"Authorization": f"Bearer {key}"},
                                     files=[("files", (name, body))], timeout=900)
            statuses.append(response.status_code)

        threads = [threading.Thread(target=post, args=("bomb.zip", bomb.getvalue())) for _ in range(3)]
        threads += [threading.Thread(target=post, args=("plain.dcm", open(plain, "rb"))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = peak_rss_mb(proc.pid)
    finally:
        stop(proc)
        plain.unlink()
    in_flight = (3 * bomb_mb + 3 * upload_mb)
    print(f"api: 3 zip bombs of {len(bomb.getvalue()) / 2**20:.1f} MB -> {bomb_mb} MB and 3 uploads of {upload_mb} MB "
          f"at once: peak RSS {peak:.0f} MB (idle {idle:.0f}), statuses {sorted(statuses)}; "
          f"(peak - idle) / bytes expanded = {(peak - idle) / in_flight:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--instance-mb", type=int, default=200)
    parser.add_argument("--bomb-mb", type=int, default=1024)
    parser.add_argument("--upload-mb", type=int, default=1900)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        bench_listener(work, args.parallel, args.instance_mb)
        bench_api(work, args.bomb_mb, args.upload_mb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
