"""Series selection rules as data: the shipped YAML, or the file settings.series_rules names."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.errors import ConfigError

DEFAULT_RULES = Path(__file__).with_name("series_rules.yaml")
Range = tuple[float | None, float | None]


class _Exclude(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_type_any: list[str] = Field(default_factory=list)
    derived: bool = True
    description_patterns: list[str] = Field(default_factory=list)
    manufacturers: list[str] = Field(default_factory=list)


class WeightingRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    weighting: str
    scanning_sequence_any: list[str] = Field(default_factory=list)
    repetition_time: Range | None = None
    echo_time: Range | None = None
    inversion_time: Range | None = None

    def matches(
        self, tr: float | None, te: float | None, ti: float | None, scanning: tuple[str, ...]
    ) -> bool:
        if self.scanning_sequence_any and not set(s.upper() for s in self.scanning_sequence_any) & set(
            scanning
        ):
            return False
        return all(
            _within(value, bounds)
            for value, bounds in ((tr, self.repetition_time), (te, self.echo_time), (ti, self.inversion_time))
            if bounds is not None
        )


class _RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    min_images: int = Field(5, ge=1)
    sagittal_max_angle_deg: float = Field(30.0, gt=0, lt=90)
    exclude: _Exclude = Field(default_factory=_Exclude)
    weighting: list[WeightingRule] = Field(default_factory=list)
    descriptions: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("descriptions")
    @classmethod
    def _compile_check(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for patterns in value.values():
            for p in patterns:
                re.compile(p)
        return value


@dataclass(frozen=True)
class SeriesRules:
    min_images: int
    sagittal_min_abs_x: float
    """|x component| of the unit slice normal a sagittal instance must reach (cos of the max angle)."""
    localizer_image_types: frozenset[str]
    exclude_derived: bool
    localizer_descriptions: tuple[re.Pattern[str], ...]
    excluded_manufacturers: frozenset[str]
    weighting: tuple[WeightingRule, ...]
    descriptions: dict[str, tuple[re.Pattern[str], ...]] = field(default_factory=dict)
    source: str = "built-in"

    def weighting_from_parameters(
        self, tr: float | None, te: float | None, ti: float | None, scanning: tuple[str, ...]
    ) -> WeightingRule | None:
        return next((r for r in self.weighting if r.matches(tr, te, ti, scanning)), None)

    def weighting_from_description(self, description: str) -> str | None:
        for weighting, patterns in self.descriptions.items():
            if any(p.search(description) for p in patterns):
                return weighting
        return None

    def is_localizer_description(self, description: str) -> bool:
        return any(p.search(description) for p in self.localizer_descriptions)


def load_rules(path: Path | None = None, own_manufacturer: str | None = None) -> SeriesRules:
    """Rules from a YAML file (the shipped defaults when path is None); ConfigError names what is wrong."""
    source = Path(path) if path is not None else DEFAULT_RULES
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
        parsed = _RulesFile.model_validate(data)
    except FileNotFoundError as exc:
        raise ConfigError(f"series rules file {source} does not exist") from exc
    except (yaml.YAMLError, ValidationError, re.error) as exc:
        raise ConfigError(f"series rules file {source} is invalid: {exc}") from exc
    manufacturers = {m.strip().lower() for m in parsed.exclude.manufacturers}
    if own_manufacturer:
        manufacturers.add(own_manufacturer.strip().lower())
    return SeriesRules(
        min_images=parsed.min_images,
        sagittal_min_abs_x=math.cos(math.radians(parsed.sagittal_max_angle_deg)),
        localizer_image_types=frozenset(t.upper() for t in parsed.exclude.image_type_any),
        exclude_derived=parsed.exclude.derived,
        localizer_descriptions=tuple(
            re.compile(p, re.IGNORECASE) for p in parsed.exclude.description_patterns
        ),
        excluded_manufacturers=frozenset(manufacturers),
        weighting=tuple(parsed.weighting),
        descriptions={
            k.upper(): tuple(re.compile(p, re.IGNORECASE) for p in v) for k, v in parsed.descriptions.items()
        },
        source=str(source),
    )


def _within(value: float | None, bounds: Range) -> bool:
    if value is None:
        return False
    low, high = bounds
    return (low is None or value >= low) and (high is None or value <= high)
