"""A synthetic case on disk: DICOM series, NIfTI label maps, truth.json and report.txt.

Layout (``out_dir`` is the study folder)::

    dicom/<series_name>/IM_0001.dcm ...   sag_t2, sag_t1, ax_t2, localizer
    labels/sag_t2.nii.gz, labels/sag_t1.nii.gz
    truth.json, report.txt
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from service.errors import SynthError

from .config import SynthConfig
from .dicom_io import write_series
from .report import write_report
from .study import STREAMS, SynthCase, synthesize_case


@dataclass
class StudyTruth:
    """Ground truth of one study, as in truth.json."""

    study_instance_uid: str
    seed: int
    source: str
    series: dict[str, dict[str, Any]]
    structures_present: list[int]
    levels: dict[str, dict[str, bool]]
    findings: list[dict[str, Any]]
    synthetic: bool = True
    transitional_anatomy: str | None = None
    folder: Path | None = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], folder: Path | None = None) -> StudyTruth:
        return cls(study_instance_uid=data["study_instance_uid"], seed=int(data["seed"]), source=data["source"],
                   series=data["series"], structures_present=list(data["structures_present"]),
                   levels=data["levels"], findings=list(data["findings"]), synthetic=bool(data["synthetic"]),
                   transitional_anatomy=data.get("transitional_anatomy"), folder=folder)

    @classmethod
    def load(cls, study_dir: Path) -> StudyTruth:
        path = Path(study_dir) / "truth.json"
        try:
            return cls.from_dict(json.loads(path.read_text()), folder=Path(study_dir))
        except (OSError, ValueError, KeyError) as exc:
            raise SynthError(f"{path}: not a synthetic study truth file ({exc})") from exc

    def to_dict(self) -> dict[str, Any]:
        return {"study_instance_uid": self.study_instance_uid, "seed": self.seed, "source": self.source,
                "synthetic": self.synthetic, "transitional_anatomy": self.transitional_anatomy,
                "series": self.series, "structures_present": self.structures_present, "levels": self.levels,
                "findings": self.findings}

    def positive_levels(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for level, flags in self.levels.items():
            hits = [k for k, v in flags.items() if v]
            if hits:
                out[level] = hits
        return out


def write_case(case: SynthCase, out_dir: Path) -> StudyTruth:
    out_dir = Path(out_dir)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    for name, s in case.series.items():
        write_series(out_dir / "dicom" / name, case.study, s.series_uid, s.number, s.protocol, s.stacks, s.pixels,
                     name)
        if s.labels is not None:
            sitk.WriteImage(s.label_image(), str(out_dir / "labels" / f"{name}.nii.gz"), True)
    (out_dir / "truth.json").write_text(json.dumps(case.truth, indent=1) + "\n")
    rng = np.random.default_rng(np.random.SeedSequence([case.seed, 0x5EED]).spawn(len(STREAMS))[-1])
    (out_dir / "report.txt").write_text(write_report(case.truth, rng))
    return StudyTruth.from_dict(case.truth, folder=out_dir)


def generate_study(out_dir: Path, seed: int, config: SynthConfig | None = None) -> StudyTruth:
    """Generate one synthetic lumbar MRI study into ``out_dir`` (the study folder itself)."""
    return write_case(synthesize_case(seed, config), out_dir)
