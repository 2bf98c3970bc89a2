"""A short radiology-style report written from the ground truth: the text-pretraining corpus.

It names exactly the injected findings at their levels (nothing else abnormal), and says the study is
normal when there are none. Phrasing is varied per seed so a text encoder sees more than one template.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.ontology import DEFAULT_ONTOLOGY

MODIC = {1: "type 1 (oedematous)", 2: "type 2 (fatty)", 3: "type 3 (sclerotic)"}


def _sentence(f: dict[str, Any], rng: np.random.Generator) -> str:
    level, key = f["level"], f["finding"]
    name = DEFAULT_ONTOLOGY.finding(key).name
    if key == "disc_bulging":
        return f"{level}: {name}, broad-based, about {f['extent_mm']:.0f} mm beyond the endplate margins."
    if key == "disc_protrusion":
        return f"{level}: {f['position']} {name} measuring {f['depth_mm']:.0f} mm in depth."
    if key == "disc_extrusion":
        return (f"{level}: {f['position']} {name} with {f['migration']} migration of about "
                f"{f['migration_mm']:.0f} mm behind the adjacent vertebral body.")
    if key == "schmorl_node":
        where = "inferior endplate of the vertebra above" if f["endplate"] == "cranial" else \
            "superior endplate of the vertebra below"
        return f"{level}: {name} at the {where}."
    if key == "vertebral_degeneration":
        plates = {"both": "both endplates", "superior": "the superior endplate", "inferior": "the inferior endplate"}
        extra = ", with anterior osteophytes" if f.get("osteophytes") else ""
        return (f"{level}: {name} with Modic {MODIC[f['modic_type']]} endplate marrow change at "
                f"{plates[f['endplate']]}{extra}.")
    raise KeyError(key)


def write_report(truth: dict[str, Any], rng: np.random.Generator) -> str:
    weightings = "sagittal T1- and T2-weighted images" + (", axial T2-weighted images" if "ax_t2" in truth["series"]
                                                         else "")
    levels = [k for k in truth["levels"] if "/" in k]
    span = f"{levels[0]} to {levels[-1]}" if levels else "the lumbar spine"
    lines = ["MRI LUMBAR SPINE (SYNTHETIC STUDY)", "",
             f"TECHNIQUE: {weightings}.", "",
             f"FINDINGS: Disc levels {span} are included in the field of view."]
    findings = sorted(truth["findings"], key=lambda f: (f["level"], f["finding"]))
    if not findings:
        lines.append(str(rng.choice([
            "Vertebral body heights and alignment are preserved. No disc herniation. Normal marrow signal.",
            "Alignment is normal. Discs and vertebral bodies show no abnormality.",
        ])))
        lines += ["", "IMPRESSION: Normal study. No abnormality of the lumbar spine."]
    else:
        lines += [_sentence(f, rng) for f in findings]
        lines.append("The remaining levels are unremarkable.")
        names = sorted({f"{DEFAULT_ONTOLOGY.finding(f['finding']).name} at {f['level']}" for f in findings})
        lines += ["", "IMPRESSION: " + "; ".join(names) + "."]
    return "\n".join(lines) + "\n"
