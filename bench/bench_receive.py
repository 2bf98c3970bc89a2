"""Receive throughput of `lumbar-ai listen` against dcmtk's storescp, measured in the same run.

The same generated 200-instance sagittal series (512x512, 16-bit) is sent by dcmtk's storescu over one
association, then split over 8 parallel associations. TCP_NODELAY is set for every dcmtk process (its
default Nagle delay makes it look 20 times slower than it is); our listener sets it on its sockets.
storescp writes exactly what it receives (+B) and forks per association for the parallel case; it never
fsyncs. Our listener runs as `lumbar-ai listen --no-assembler` with fsync on (the default), and once with
fsync off to show what durability costs. Goal: ours / storescp >= 0.5 with fsync on.

    .venv/bin/python bench/bench_receive.py [--instances 200] [--parallel 8] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

ROOT = Path(__file__).resolve().parent.parent
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_series(out: Path, count: int, size: int = 512) -> list[Path]:
    """A sagittal T2-like series: realistic sizes and headers, noise for pixels (compression is not tested)."""
    out.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "MR", "SAG T2 BENCH", 3, i + 1
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [float(i), 0.0, 0.0]
        ds.RepetitionTime, ds.EchoTime, ds.ScanningSequence = 3500.0, 100.0, "SE"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = rng.integers(0, 4000, (size, size), dtype=np.uint16).tobytes()
        path = out / f"IM_{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"receiver exited with {proc.returncode}")
        result = subprocess.run(
            ["echoscu", "-aec", "LUMBAR_AI", "127.0.0.1", str(port)], capture_output=True, env=DCMTK_ENV
        )
        if result.returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit("receiver did not answer C-ECHO")


def start_ours(out: Path, port: int, fsync: bool) -> subprocess.Popen:
    env = {
        **os.environ,
        "LUMBAR_AI_DATA_DIR": str(out),
        "LUMBAR_AI_FSYNC": "true" if fsync else "false",
        "LUMBAR_AI_DISK_RESERVE_MB": "0",
        "LUMBAR_AI_MAX_ASSOCIATIONS": "16",
        "PYTHONPATH": str(ROOT),
    }
    cmd = [
        sys.executable,
        "-m",
        "service.cli",
        "listen",
        "--no-assembler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_storescp(out: Path, port: int) -> subprocess.Popen:
    cmd = ["storescp", "--fork", "+B", "-aet", "LUMBAR_AI", "-od", str(out), str(port)]
    return subprocess.Popen(cmd, env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def send(port: int, files: list[Path], parallel: int) -> float:
    """Seconds from the first storescu start until the last one finished, all instances acknowledged."""
    chunks = [files[i::parallel] for i in range(parallel)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", "LUMBAR_AI", "127.0.0.1", str(port), *map(str, chunk)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for chunk in chunks
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"storescu failed ({p.returncode}): {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - start


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(kind: str, files: list[Path], parallel: int, work: Path, repeat: int) -> float:
    """Best of `repeat` runs (each into an empty directory), in seconds."""
    best = float("inf")
    for r in range(repeat):
        out = work / f"{kind}-{parallel}-{r}"
        out.mkdir()
        port = free_port()
        proc = (
            start_storescp(out, port) if kind == "storescp" else start_ours(out, port, fsync=kind == "ours")
        )
        try:
            wait_for_port(port, proc)
            best = min(best, send(port, files, parallel))
        finally:
            stop(proc)
        received = sum(
            1 for p in out.rglob("*") if p.is_file() and (p.suffix == ".dcm" or p.name.startswith("MR"))
        )
        if received != len(files):
            raise SystemExit(f"{kind}: {received} of {len(files)} instances on disk")
        shutil.rmtree(out)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} (dcmtk) is needed")
    with tempfile.TemporaryDirectory(prefix="bench_receive_") as tmp:
        work = Path(tmp)
        files = write_series(work / "series", args.instances)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"series: {len(files)} instances, {megabytes:.1f} MB; {os.cpu_count()} CPUs; best of {args.repeat}"
        )
        print(f"{'receiver':<22}{'assoc':>6}{'seconds':>9}{'inst/s':>9}{'MB/s':>8}{'vs storescp':>13}")
        for parallel in (1, args.parallel):
            peer = measure("storescp", files, parallel, work, args.repeat)
            for kind, label in (
                ("storescp", "storescp (no fsync)"),
                ("ours", "ours (fsync on)"),
                ("ours-nofsync", "ours (fsync off)"),
            ):
                seconds = peer if kind == "storescp" else measure(kind, files, parallel, work, args.repeat)
                print(
                    f"{label:<22}{parallel:>6}{seconds:>9.2f}{len(files) / seconds:>9.1f}"
                    f"{megabytes / seconds:>8.1f}{peer / seconds:>13.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
