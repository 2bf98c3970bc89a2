"""The shipped model directory: an export with its measured figures, curves and contact sheet in its card.

    python -m model_export.release --export runs/release/export --run runs/release/mixed \\
        --real-eval runs/release/eval_real --generated-eval runs/release/eval_generated --out models/lumbar-ai-1

The last step of scripts/build_release_model.sh. The card gains ``intended_use`` (not a medical device),
``metrics.real_validation`` (the real validation split, as delivered and raw, without the per-case rows),
``metrics.generated_test`` and the training time; ``curves.png`` and ``contact_sheet.png`` are copied
beside it. The directory is replaced whole, so shipping a retrained model adds no more to the repository
than the new directory's size, and it is refused above MAX_MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from service.errors import ModelExportError

MAX_MB = 60.0
INTENDED_USE = (
    "Research and evaluation software: segmentation of the lumbar spine (sacrum, vertebrae L5-T9, discs "
    "L5/S1-T9/T10) and five per-level findings on sagittal T1 and T2 MRI. Not a medical device: not cleared or "
    "approved for clinical use; every result needs review by a radiologist.")


def _pooled(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "per_case"} for m in summary["models"]]


def release(export: Path, run: Path, real_eval: Path, generated_eval: Path, out: Path) -> dict[str, Any]:
    card = json.loads((export / "model.json").read_text())
    real = json.loads((real_eval / "real_evaluation.json").read_text())
    generated = json.loads((generated_eval / "evaluation.json").read_text())
    provenance = card["training"]
    card["intended_use"] = INTENDED_USE
    card["metrics"] = {
        "real_validation": {"cases": provenance.get("real_validation_cases", []), "scores": _pooled(real)},
        "generated_test": {"data": str(generated_eval), "scores": generated},
        "training_time": {"steps": provenance.get("steps"), "cpu_s": provenance.get("cpu_time_s"),
                          "wall_s": provenance.get("wall_time_s"), "threads": provenance.get("threads")},
    }
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(export, staging)
    (staging / "model.json").write_text(json.dumps(card, indent=2))
    shutil.copy(run / "curves.png", staging / "curves.png")
    sheets = sorted(real_eval.glob("real_contact_sheet_*.png"))
    if sheets:
        shutil.copy(sheets[0], staging / "contact_sheet.png")
    size_mb = sum(f.stat().st_size for f in staging.iterdir()) / 1e6
    if size_mb > MAX_MB:
        shutil.rmtree(staging)
        raise ModelExportError(f"{out.name} would be {size_mb:.1f} MB, above the {MAX_MB:.0f} MB a shipped model may take")
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    print(f"{out}: {size_mb:.1f} MB")
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("export", "run", "real-eval", "generated-eval", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    args = parser.parse_args(argv)
    release(args.export, args.run, args.real_eval, args.generated_eval, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
