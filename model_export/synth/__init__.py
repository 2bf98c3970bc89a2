"""Synthetic lumbar MRI studies with ground truth (numpy, SciPy, SimpleITK and pydicom; no torch).

    from model_export.synth import generate_study, synthesize_case, SynthConfig, StudyTruth
    truth = generate_study(Path("out/study_00042"), seed=42)        # DICOM + labels + truth.json + report
    case = synthesize_case(42, SynthConfig(include_axial=False))    # the same study as numpy arrays
"""

from .config import SynthConfig
from .output import StudyTruth, generate_study, write_case
from .study import SynthCase, SynthSeries, synthesize_case

__all__ = ["StudyTruth", "SynthCase", "SynthConfig", "SynthSeries", "generate_study", "synthesize_case",
           "write_case"]
