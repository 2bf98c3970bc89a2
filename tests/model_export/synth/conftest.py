"""Small synthetic studies shared by the synth tests (generated once per session: they take seconds)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from model_export.synth import SynthConfig, generate_study
from model_export.synth.config import SMALL_TEST_CONFIG

SMALL = SynthConfig(use_spider=False, **SMALL_TEST_CONFIG)
WITH_FINDINGS = replace(SMALL, finding_prevalence=1.0, normal_fraction=0.0)
SEED = 7


@pytest.fixture(scope="session")
def procedural_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A procedural study with findings at most eligible levels."""
    out = tmp_path_factory.mktemp("synth") / "study_a"
    generate_study(out, SEED, WITH_FINDINGS)
    return out


@pytest.fixture(scope="session")
def procedural_study_again(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "study_b"
    generate_study(out, SEED, WITH_FINDINGS)
    return out
