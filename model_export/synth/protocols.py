"""Acquisition parameters and series descriptions as scanners write them (DESIGN.md section 6).

TR alone does not tell T1 from T2: a sagittal T1 is often a T1 FLAIR (inversion recovery, TI 700-900,
TR 2000-2500, TE < 40), the T2 a fast spin echo (TR 3000-5000, TE 80-120). Descriptions are free text
in several vendor styles so series selection cannot lean on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Protocol:
    description: str
    weighting: str  # "T1" | "T2" | "LOC"
    scanning_sequence: str  # "SE", "IR", "GR" or combinations with "\\"
    sequence_variant: str
    scan_options: str
    repetition_time: float
    echo_time: float
    inversion_time: float | None
    echo_train_length: int
    flip_angle: float
    image_type: tuple[str, ...]
    sequence_name: str


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def sagittal_t2(rng: np.random.Generator, matrix: int) -> Protocol:
    desc = _pick(rng, ["T2 SAG FSE", f"t2_tse_sag_{matrix}", "Sag T2 frFSE S", "SAG T2", "T2W_TSE SAG", "sag t2 tse"])
    return Protocol(desc, "T2", "SE", "SK\\OSP", "FAST_GEMS\\SAT_GEMS" if rng.random() < 0.5 else "PFP",
                    round(float(rng.uniform(3000, 5000)), 1), round(float(rng.uniform(80, 120)), 2), None,
                    int(rng.integers(12, 25)), 90.0 if rng.random() < 0.5 else 150.0,
                    ("ORIGINAL", "PRIMARY", "OTHER") if rng.random() < 0.6 else ("ORIGINAL", "PRIMARY", "M", "NORM"),
                    "*tse2d1_17" if rng.random() < 0.5 else "FSE")


def sagittal_t1(rng: np.random.Generator, matrix: int) -> Protocol:
    image_type = ("ORIGINAL", "PRIMARY", "OTHER") if rng.random() < 0.6 else ("ORIGINAL", "PRIMARY", "M", "NORM")
    if rng.random() < 0.5:  # T1 FLAIR: inversion recovery
        desc = _pick(rng, ["SAG T1 FLAIR", "Sag T1 FLAIR", "t1_flair_sag", "T1 FLAIR SAG"])
        return Protocol(desc, "T1", "SE\\IR", "SK\\OSP", "IR\\FAST_GEMS", round(float(rng.uniform(2000, 2500)), 1),
                        round(float(rng.uniform(8, 30)), 2), round(float(rng.uniform(700, 900)), 1),
                        int(rng.integers(6, 11)), 90.0, image_type, "*tir2d1_7")
    desc = _pick(rng, ["sag t1 tse", "T1 SAG FSE", f"t1_tse_sag_{matrix}", "SAG T1", "T1W_TSE SAG"])
    return Protocol(desc, "T1", "SE", "SK\\OSP", "PFP", round(float(rng.uniform(400, 750)), 1),
                    round(float(rng.uniform(8, 15)), 2), None, int(rng.integers(2, 5)), 90.0, image_type, "*tse2d1_3")


def axial_t2(rng: np.random.Generator) -> Protocol:
    desc = _pick(rng, ["AX T2 FSE", "t2_tse_tra", "Ax T2 frFSE L3-S1", "T2W_TSE TRA", "ax t2"])
    return Protocol(desc, "T2", "SE", "SK\\OSP", "PFP", round(float(rng.uniform(3500, 6000)), 1),
                    round(float(rng.uniform(85, 115)), 2), None, int(rng.integers(14, 25)), 90.0,
                    ("ORIGINAL", "PRIMARY", "OTHER"), "*tse2d1_15")


def localizer(rng: np.random.Generator) -> Protocol:
    desc = _pick(rng, ["3-Plane Loc", "localizer", "3pl loc", "Survey", "AAHScout"])
    image_type = ("ORIGINAL", "PRIMARY", "OTHER") if rng.random() < 0.5 else ("ORIGINAL", "PRIMARY", "LOCALIZER")
    return Protocol(desc, "LOC", "GR", "SS\\SP", "", round(float(rng.uniform(5, 9)), 2),
                    round(float(rng.uniform(1.5, 3.0)), 2), None, 1, 30.0, image_type, "*fl2d1")
