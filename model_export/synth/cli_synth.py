"""``lumbar-ai synth``: write N synthetic studies, study i from seed S+i, into OUT/study_{seed:05d}."""

from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from service.errors import SynthError

from .config import SynthConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder that receives study_NNNNN folders")
    parser.add_argument("--studies", type=int, default=1, help="number of studies (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first study; study i uses seed+i")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--procedural", action="store_true", help="never use the SPIDER masks in ../shared")
    source.add_argument("--spider", action="store_true", help="always build on a SPIDER mask (fails without)")
    parser.add_argument("--spider-dir", type=Path, default=None, help="folder of SPIDER *.mha masks")
    parser.add_argument("--prevalence", type=float, default=None, help="finding probability per eligible level")
    parser.add_argument("--normal-fraction", type=float, default=None,
                        help="share of studies with no finding at all (default 0.2)")
    parser.add_argument("--random-contrast", type=float, default=None, metavar="SHARE",
                        help="share of sagittal series rendered with fully random tissue signals (default 0)")
    parser.add_argument("--no-axial", action="store_true", help="omit the axial T2 series")
    parser.add_argument("--no-localizer", action="store_true", help="omit the 3-plane localizer")
    parser.add_argument("--matrix", type=int, nargs=2, metavar=("MIN", "MAX"), default=None,
                        help="sagittal matrix range (default 320 448; the issue allows 256-768)")
    parser.add_argument("--slices", type=int, nargs=2, metavar=("MIN", "MAX"), default=None,
                        help="sagittal slice-count range (default 11 17; allowed 9-21)")


def config_from(args: argparse.Namespace) -> SynthConfig:
    extra: dict = {}
    if args.prevalence is not None:
        extra["finding_prevalence"] = args.prevalence
    if args.normal_fraction is not None:
        extra["normal_fraction"] = args.normal_fraction
    if args.random_contrast is not None:
        extra["random_contrast"] = args.random_contrast
    if args.matrix is not None:
        extra["matrix"] = tuple(args.matrix)
    if args.slices is not None:
        extra["slices"] = tuple(args.slices)
    use_spider = False if args.procedural else True if args.spider else None
    return SynthConfig(use_spider=use_spider, spider_dir=args.spider_dir,
                       include_axial=not args.no_axial, include_localizer=not args.no_localizer, **extra)


def study_dir(out: Path, seed: int) -> Path:
    return out / f"study_{seed:05d}"


def _one(job: tuple[Path, int, SynthConfig]) -> int:
    from .output import generate_study

    out, seed, config = job
    generate_study(study_dir(out, seed), seed, config)
    return seed


def run(args: argparse.Namespace) -> int:
    if args.studies < 1:
        raise SynthError("--studies must be at least 1")
    if args.workers < 1:
        raise SynthError("--workers must be at least 1")
    config = config_from(args)
    config.resolved_spider_dir()  # fail early when --spider-dir is wrong
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(args.out, args.seed + i, config) for i in range(args.studies)]
    start = time.perf_counter()
    with tqdm(total=len(jobs), unit="study", desc="synth") as bar:
        if args.workers == 1:
            for job in jobs:
                _one(job)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=args.workers) as pool:
                for _ in pool.map(_one, jobs):
                    bar.update()
    elapsed = time.perf_counter() - start
    log.info("wrote %d studies to %s in %.1f s (%.2f studies/s)", len(jobs), args.out, elapsed,
             len(jobs) / elapsed)
    return 0
