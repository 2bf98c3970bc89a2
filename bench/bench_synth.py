"""Synthetic study generation speed per core, against a plain SimpleITK write of the same volumes.

Every study is generated at the default size (SynthConfig()) in this one process with SimpleITK
limited to one thread, so the rate is studies per second per core. Target: >= 1. The peer, measured in
the same run on the same data, is SimpleITK writing the study's sagittal T2 and T1 volumes and their
label maps as compressed NIfTI: the cost of merely storing what we generate. Printed: the stage
breakdown (anatomy and rendering in memory, DICOM and label writing), studies/s/core with its ratio
to the target, and generation time as a multiple of the peer write time. Rates are given from wall
time and from the process's CPU time; on a machine shared with other jobs the CPU-time rate is the
better estimate of what one idle core does.

    .venv/bin/python bench/bench_synth.py [--studies 6] [--seed 1000] [--procedural]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model_export.synth import SynthConfig, synthesize_case, write_case  # noqa: E402

TARGET = 1.0  # studies per second per core


def _peer_write(case, folder: Path) -> float:  # noqa: ANN001 - a SynthCase
    """Seconds SimpleITK needs to write the same sagittal volumes and label maps as NIfTI."""
    start = time.perf_counter()
    for name in ("sag_t2", "sag_t1"):
        s = case.series[name]
        img = sitk.GetImageFromArray(s.image)
        img.CopyInformation(s.label_image())
        sitk.WriteImage(img, str(folder / f"{name}.nii.gz"), True)
        sitk.WriteImage(s.label_image(), str(folder / f"{name}_labels.nii.gz"), True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--procedural", action="store_true", help="never use ../shared SPIDER masks")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    config = SynthConfig(use_spider=False if args.procedural else None)
    synthesize_case(args.seed - 1, config)  # warm-up: imports, first SPIDER mask read
    t_synth = t_write = t_peer = cpu_gen = cpu_peer = 0.0
    sizes = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.studies):
            seed = args.seed + i
            start, cpu0 = time.perf_counter(), time.process_time()
            case = synthesize_case(seed, config)
            mid = time.perf_counter()
            write_case(case, Path(tmp) / f"study_{seed:05d}")
            t_synth += mid - start
            t_write += time.perf_counter() - mid
            cpu1 = time.process_time()
            cpu_gen += cpu1 - cpu0
            peer_dir = Path(tmp) / f"peer_{seed:05d}"
            peer_dir.mkdir()
            t_peer += _peer_write(case, peer_dir)
            cpu_peer += time.process_time() - cpu1
            t2 = case.series["sag_t2"].image.shape
            sizes.append(f"{case.truth['source'].split(':')[0]} {t2[1]}x{t2[2]}x{t2[0]}")
    total = t_synth + t_write
    rate = args.studies / total
    print(f"studies: {args.studies} ({', '.join(sizes)})")
    print(f"in memory (anatomy, rendering): {t_synth / args.studies:.3f} s/study")
    print(f"writing (DICOM, NIfTI, JSON, report): {t_write / args.studies:.3f} s/study")
    cpu_rate = args.studies / cpu_gen
    print(f"generation (wall): {rate:.2f} studies/s/core; ratio to target {TARGET:.1f}: {rate / TARGET:.2f}")
    print(f"generation (CPU time): {cpu_rate:.2f} studies/s/core; ratio to target {TARGET:.1f}: "
          f"{cpu_rate / TARGET:.2f}")
    print(f"peer (SimpleITK NIfTI write of the same sagittal volumes and labels): {t_peer / args.studies:.3f} s/study"
          f" wall, {cpu_peer / args.studies:.3f} s CPU; generation takes {total / t_peer:.1f}x the peer (wall),"
          f" {cpu_gen / cpu_peer:.1f}x (CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
