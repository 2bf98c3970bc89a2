"""``models/demo`` on first use: generate studies, train within a CPU budget, export; cached afterwards.

``make demo`` calls :func:`ensure_demo_model` (or ``lumbar-ai build-demo-model``). The whole build, from
generation to the checked export, is held to ``budget_s`` (15 minutes by default) of wall time on the
machine's cores: training gets what generation, the level classifier and the export reserve leave. SPIDER masks are split by
patient so that held-out evaluation sets can use masks the model never saw (:func:`spider_split`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

EXPORT_RESERVE_S = 120.0
"""Wall time kept back for the final validation, threshold tuning and the checked export."""
LEVEL_CLASSIFIER_RESERVE_S = 150.0
"""Wall time kept back for the level classifier: its crops and LEVEL_CLASSIFIER_STEPS steps on 2 cores."""
LEVEL_CLASSIFIER_STEPS = {"tiny": 3}
"""Steps of the level classifier per config; 400 for any other."""
LEVEL_CLASSIFIER_VAL_CASES = 6
"""The last studies, left out of the classifier's training, on which its thresholds are set."""
TRAIN_SEED_BASE = 10_000
HELD_OUT_SEED_BASE = 90_000


def spider_split(work: Path, held_out_every: int = 4) -> tuple[Path | None, Path | None]:
    """Two folders of links to SPIDER masks, split by patient (every 4th patient held out)."""
    import importlib.util

    from model_export.synth.config import DEFAULT_SPIDER_DIR

    if importlib.util.find_spec("model_export.synth.spider") is None:  # synth without SPIDER support
        return None, None
    if not DEFAULT_SPIDER_DIR.is_dir() or not any(DEFAULT_SPIDER_DIR.glob("*.mha")):
        return None, None
    patients = sorted({p.name.split("_")[0] for p in DEFAULT_SPIDER_DIR.glob("*.mha")}, key=lambda s: (len(s), s))
    held_out = set(patients[::held_out_every])
    folders = {"train": work / "spider_train", "held_out": work / "spider_held_out"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for mask in DEFAULT_SPIDER_DIR.glob("*.mha"):
        folder = folders["held_out" if mask.name.split("_")[0] in held_out else "train"]
        link = folder / mask.name
        if not link.exists():
            link.symlink_to(mask.resolve())
    return folders["train"], folders["held_out"]


def generate_studies(out_dir: Path, count: int, seed_base: int, spider_dir: Path | None,
                     small: bool = False) -> Path:
    """``count`` generated studies (sagittal series only) as out_dir/study_<seed>; existing ones are kept."""
    from model_export.synth import SynthConfig, generate_study
    from model_export.synth.config import SMALL_TEST_CONFIG

    overrides = dict(SMALL_TEST_CONFIG) if small else {}
    config = SynthConfig(include_axial=False, include_localizer=False, spider_dir=spider_dir,
                         use_spider=None if spider_dir is not None else False, **overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    for seed in range(seed_base, seed_base + count):
        folder = out_dir / f"study_{seed}"
        if not (folder / "truth.json").is_file():
            generate_study(folder, seed=seed, config=config)
    return out_dir


def ensure_demo_model(models_dir: Path, budget_s: float = 900.0, force: bool = False, studies: int = 48,
                      config_name: str = "demo", progress: bool = True) -> Path:
    """Path of models_dir/demo, building it first when absent (or when ``force``)."""
    import torch

    from model_export.configs import get_config
    from model_export.data import discover_cases
    from model_export.export import export_model
    from model_export.training.level_training import add_level_classifier
    from model_export.training.loop import train

    models_dir = Path(models_dir)
    target = models_dir / "demo"
    if (target / "model.json").is_file() and not force:
        return target
    torch.set_num_threads(2)
    started = time.perf_counter()
    work = models_dir / ".demo_build"
    spider_train, _ = spider_split(work)
    data = generate_studies(work / "studies", studies, TRAIN_SEED_BASE, spider_train,
                            small=config_name == "tiny")
    generation_s = time.perf_counter() - started
    train_budget = max(30.0, budget_s - generation_s - EXPORT_RESERVE_S - LEVEL_CLASSIFIER_RESERVE_S)
    run = get_config(config_name)
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, time_budget_s=train_budget))
    log.info("generated %d studies in %.0f s; training for at most %.0f s", studies, generation_s, train_budget)
    checkpoint = train(data, run, work / "run", progress=progress)
    cases = discover_cases(data)
    held = min(LEVEL_CLASSIFIER_VAL_CASES, len(cases) // 3)
    checkpoint = Path(add_level_classifier(
        checkpoint, cases[:len(cases) - held], cases[len(cases) - held:] or None, work / "run" / "levels.pt",
        LEVEL_CLASSIFIER_STEPS.get(config_name, 400), progress=progress,
        sources={"data_dir": str(data), "split": f"the last {held} studies validate"})["out"])
    staging = models_dir / ".demo_staging"
    shutil.rmtree(staging, ignore_errors=True)
    export_model(checkpoint, staging, name="demo")
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)
    log.info("models/demo built in %.0f s", time.perf_counter() - started)
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--budget-s", type=float, default=900.0, help="wall-time budget of the whole build")
    parser.add_argument("--studies", type=int, default=48, help="generated training studies")
    parser.add_argument("--config", default="demo", help="training configuration (tiny for a smoke test)")
    parser.add_argument("--force", action="store_true", help="rebuild even when models/demo exists")


def run(args: argparse.Namespace) -> int:
    path = ensure_demo_model(args.models_dir, args.budget_s, args.force, args.studies, args.config)
    print(path)
    return 0
