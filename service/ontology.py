"""The ontology of the default model: 19 spinal structures and 5 per-level findings.

Label values follow the MRSpineSeg convention (label value = index, 0 = background). Codes and meanings
of the structures are SNOMED CT as pydicom's ``pydicom.sr.codedict`` gives them. The findings have no
codes in DICOM PS3.16, so they use a private coding scheme declared in every SR we write, with ICD-10
cross-references for the model card.

Nothing else in the code hard-codes label numbers: the model card (``model.json``) carries this ontology
as data (:meth:`Ontology.to_dict`) and the service reads it back (:meth:`Ontology.from_dict`), so a model
retrained with other labels needs no service change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SCT = "SCT"
PRIVATE_SCHEME = "99LUMBARAI"
PRIVATE_SCHEME_NAME = "lumbar-ai findings"
ANATOMICAL_STRUCTURE = ("91723000", SCT, "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = ("49755003", SCT, "Morphologically Abnormal Structure")

StructureKind = Literal["sacrum", "vertebra", "disc"]
SiteKind = Literal["disc", "vertebra"]

STRUCTURE_PROMPTS = (
    "{name}",
    "the {name} on a sagittal lumbar spine MRI",
    "a sagittal MR image of the {name}",
    "segmentation of the {name}",
)
FINDING_PROMPTS = (
    "{name}",
    "{name} on lumbar spine MRI",
    "a spinal level with {name}",
    "sagittal MRI showing {name}",
)


@dataclass(frozen=True)
class Structure:
    """One segmented structure: its label value, the level it names, and its SNOMED CT code."""

    label: int
    name: str
    kind: StructureKind
    level: str
    code_value: str
    code_meaning: str
    color: tuple[int, int, int]
    prompts: tuple[str, ...] = STRUCTURE_PROMPTS

    def prompt_texts(self) -> list[str]:
        return [p.format(name=self.name) for p in self.prompts]


@dataclass(frozen=True)
class Finding:
    """One abnormality identified per level (disc findings per disc, vertebral ones per vertebra)."""

    key: str
    name: str
    site: SiteKind
    code_value: str
    code_meaning: str
    icd10: str
    description: str
    prompts: tuple[str, ...] = FINDING_PROMPTS

    def prompt_texts(self) -> list[str]:
        return [p.format(name=self.name) for p in self.prompts]


def _structures() -> tuple[Structure, ...]:
    vertebrae = [  # (level, SCT code, meaning as in pydicom's codedict)
        ("L5", "49668003", "L5 vertebra"),
        ("L4", "11994002", "L4 vertebra"),
        ("L3", "36470004", "L3 vertebra"),
        ("L2", "14293000", "L2 vertebra"),
        ("L1", "66794005", "L1 vertebra"),
        ("T12", "23215003", "T12 vertebra"),
        ("T11", "12989004", "T11 vertebra"),
        ("T10", "7610001", "T10 vertebra"),
        ("T9", "82687006", "T9 vertebra"),
    ]
    discs = [
        ("L5/S1", "715056000", "Structure of intervertebral disc of L5 and S1 (body structure)"),
        ("L4/L5", "84020006", "L4/L5 disc"),
        ("L3/L4", "62551000", "L3/L4 disc"),
        ("L2/L3", "67459009", "L2/L3 disc"),
        ("L1/L2", "80064006", "L1/L2 disc"),
        ("T12/L1", "76206002", "T12/L1 disc"),
        ("T11/T12", "1537001", "T11/T12 disc"),
        ("T10/T11", "34959001", "T10/T11 disc"),
        ("T9/T10", "113209001", "T9/T10 disc"),
    ]
    # Vertebrae warm, discs cool; neighbours differ enough to tell apart on an overlay.
    vertebra_colors = [
        (230, 25, 75), (245, 130, 48), (255, 225, 25), (210, 245, 60), (60, 180, 75),
        (170, 110, 40), (128, 128, 0), (250, 190, 212), (255, 215, 180),
    ]
    disc_colors = [
        (0, 130, 200), (70, 240, 240), (145, 30, 180), (240, 50, 230), (0, 128, 128),
        (220, 190, 255), (0, 0, 128), (100, 149, 237), (170, 255, 195),
    ]
    out = [Structure(1, "Sacrum", "sacrum", "S1", "54735007", "Sacrum", (255, 250, 200))]
    for i, (level, code, meaning) in enumerate(vertebrae):
        out.append(Structure(2 + i, f"{level} vertebra", "vertebra", level, code, meaning, vertebra_colors[i]))
    for i, (level, code, meaning) in enumerate(discs):
        out.append(Structure(11 + i, f"{level} disc", "disc", level, code, meaning, disc_colors[i]))
    return tuple(out)


def _findings() -> tuple[Finding, ...]:
    return (
        Finding("disc_bulging", "disc bulging", "disc", "LAI0001", "Disc bulging", "M51.2",
                "broad-based, symmetric extension of the disc beyond the endplate margins"),
        Finding("disc_protrusion", "disc protrusion", "disc", "LAI0002", "Disc protrusion", "M51.2",
                "focal posterior herniation, base wider than its extent into the canal"),
        Finding("disc_extrusion", "disc extrusion", "disc", "LAI0003", "Disc extrusion", "M51.2",
                "herniation whose extent exceeds its base, may migrate cranially or caudally"),
        Finding("schmorl_node", "Schmorl's node", "disc", "LAI0004", "Schmorl's node", "M51.4",
                "disc material intruding into the vertebral body through the endplate"),
        Finding("vertebral_degeneration", "vertebral degeneration", "vertebra", "LAI0005",
                "Vertebral degeneration", "M51.3",
                "endplate and marrow (Modic-type) signal change, sclerosis, osteophytes"),
    )


@dataclass(frozen=True)
class Ontology:
    structures: tuple[Structure, ...] = field(default_factory=_structures)
    findings: tuple[Finding, ...] = field(default_factory=_findings)

    def __post_init__(self) -> None:
        labels = [s.label for s in self.structures]
        if sorted(labels) != list(range(1, len(labels) + 1)):
            raise ValueError(f"structure labels must be 1..N without gaps, got {labels}")
        if len({f.key for f in self.findings}) != len(self.findings):
            raise ValueError("finding keys must be unique")

    @property
    def num_classes(self) -> int:
        """Number of output channels including background (label 0)."""
        return len(self.structures) + 1

    def by_label(self, label: int) -> Structure:
        return self.structures[label - 1]

    def by_level(self, level: str, kind: StructureKind) -> Structure:
        for s in self.structures:
            if s.level == level and s.kind == kind:
                return s
        raise KeyError(f"no {kind} at level {level}")

    def of_kind(self, kind: StructureKind) -> list[Structure]:
        return [s for s in self.structures if s.kind == kind]

    def finding(self, key: str) -> Finding:
        for f in self.findings:
            if f.key == key:
                return f
        raise KeyError(f"unknown finding {key!r}")

    def findings_at(self, site: SiteKind) -> list[Finding]:
        return [f for f in self.findings if f.site == site]

    def caudal_to_cranial(self) -> list[Structure]:
        """Sacrum, L5/S1 disc, L5, L4/L5 disc, ... T9/T10 disc: the order they stack in the spine."""
        vertebrae = self.of_kind("vertebra")
        discs = self.of_kind("disc")
        order: list[Structure] = list(self.of_kind("sacrum"))
        for disc, vertebra in zip(discs, vertebrae, strict=False):
            order += [disc, vertebra]
        return order

    def to_dict(self) -> dict[str, Any]:
        return {
            "structure_category": list(ANATOMICAL_STRUCTURE),
            "finding_category": list(MORPHOLOGICALLY_ABNORMAL_STRUCTURE),
            "finding_coding_scheme": {"designator": PRIVATE_SCHEME, "name": PRIVATE_SCHEME_NAME},
            "structures": [asdict(s) for s in self.structures],
            "findings": [asdict(f) for f in self.findings],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ontology:
        try:
            structures = tuple(
                Structure(**{**s, "color": tuple(s["color"]), "prompts": tuple(s["prompts"])})
                for s in data["structures"]
            )
            findings = tuple(Finding(**{**f, "prompts": tuple(f["prompts"])}) for f in data["findings"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"model card ontology is malformed: {exc}") from exc
        return cls(structures=structures, findings=findings)


DEFAULT_ONTOLOGY = Ontology()
