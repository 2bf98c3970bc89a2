"""Who made the results, and their UIDs: the same for every attempt of one job.

SOP, series and tracking UIDs are derived from the job id, so a retried job (a worker killed mid-job, a
PACS that was down) writes and sends byte-for-byte the same instances, and a PACS that already stored one
sees a duplicate rather than a second result. IHE AI Results asks for the algorithm's identity in the
SEG and the SR and for the contributing equipment in every instance; both come from here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
from pydicom.sr.codedict import codes

SEG_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
PREVIEW_SERIES_NUMBER = 9903
SOFTWARE_NAME = "lumbar-ai"


UID_NAMESPACE = uuid.UUID("6f0c8d52-4f1e-5d0b-9a39-1b7c2f7e0a11")
"""Namespace of our name-based (version 5) UUIDs."""


def derive_uid(job_id: str, *parts: str) -> str:
    """A 2.25 UID from a name-based UUID of the job id and a purpose; stable across processes and retries."""
    name = "\x1f".join([job_id, *parts])
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}"


@dataclass(frozen=True)
class ResultContext:
    """What every result instance of one job shares."""

    job_id: str
    model_name: str
    model_version: str
    manufacturer: str
    software_version: str
    card: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_card(cls, job_id: str, card: dict[str, Any], manufacturer: str) -> ResultContext:
        from importlib.metadata import PackageNotFoundError, version

        try:
            software = version("lumbar-ai")
        except PackageNotFoundError:
            software = "0+unknown"
        return cls(
            job_id=job_id,
            model_name=str(card.get("name", "lumbar-ai model")),
            model_version=str(card.get("version", "unknown")),
            manufacturer=manufacturer,
            software_version=software,
            card=card,
        )

    def uid(self, *parts: str) -> str:
        return derive_uid(self.job_id, *parts)

    @property
    def provenance_statement(self) -> str:
        """What the card says the model was trained on (``training.statement``, or a ``provenance`` field)."""
        training = self.card.get("training")
        if isinstance(training, dict) and isinstance(training.get("statement"), str):
            return training["statement"]
        value = self.card.get("provenance") or training
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            for key in ("statement", "summary", "description"):
                if isinstance(value.get(key), str):
                    return value[key]
        return "training data not stated in the model card"

    @property
    def trained_on_synthetic_data(self) -> bool:
        """True for a model trained wholly or partly on generated studies."""
        return "synthetic" in self.provenance_statement.lower()

    @property
    def synthetic_data_statement(self) -> str:
        """One sentence for the report and the preview: how much of the training data was generated.

        A model trained partly on real scans must not be labelled "synthetic only", nor one trained on
        generated studies alone be passed off as validated on real scans."""
        if not self.trained_on_synthetic_data:
            return ""
        if "partly" in self.provenance_statement.lower():
            return "Model trained partly on synthetic data, partly on real labelled scans (see its model card)"
        return "Model trained on synthetic data only; its results on real scans are not validated"

    @property
    def software_versions(self) -> list[str]:
        """A list, not a tuple: pydicom refuses tuples for multi-valued LO."""
        return [f"{SOFTWARE_NAME} {self.software_version}", f"{self.model_name} {self.model_version}"]

    def algorithm_identification(self) -> hd.AlgorithmIdentificationSequence:
        return hd.AlgorithmIdentificationSequence(
            name=self.model_name,
            family=codes.cid7162.ArtificialIntelligence,
            version=self.model_version,
            source=self.manufacturer,
        )

    def sr_algorithm(self) -> hd.sr.AlgorithmIdentification:
        return hd.sr.AlgorithmIdentification(
            name=self.model_name, version=self.model_version, family=codes.cid7162.ArtificialIntelligence
        )

    def contributing_equipment(self) -> list[hd.ContributingEquipment]:
        return [
            hd.ContributingEquipment(
                manufacturer=self.manufacturer,
                purpose_of_reference=codes.DCM.ProcessingEquipment,
                manufacturer_model_name=SOFTWARE_NAME,
                software_versions=self.software_versions,
                contribution_description=f"AI analysis by {self.model_name} {self.model_version}",
            )
        ]
