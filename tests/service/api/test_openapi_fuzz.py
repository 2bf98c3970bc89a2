"""Schemathesis drives every operation of the OpenAPI document with generated requests: no 5xx, ever.

Each generated request (valid ones, and invalid ones in negative mode) is sent with the key, to reach the
handlers, and without it, to meet the auth check; a server error is a bug whatever the input. Operations
on one study also run against a real study with results, so the handlers behind the 404 are reached too.
(Schemathesis' own pytest plugin does not load under pytest 9, so its strategies are driven directly.)
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydicom.uid import generate_uid
from schemathesis import GenerationMode

from service import telemetry
from service.api.app import create_app
from service.config import Settings
from service.queue.state import StudyState
from tests.service.api.conftest import AUTH, mr_instance

PUBLIC = {"/healthz", "/readyz", "/ui"}


@schemathesis.serializer("multipart/related")
def _related_body(ctx, value) -> bytes | None:
    """STOW-RS bodies: whatever was generated, sent raw (a malformed multipart must be a 4xx)."""
    if value is None:
        return None
    return value if isinstance(value, bytes) else str(value).encode()


def _known_study(app, settings: Settings) -> str:
    """A finished study with a report and a SEG on disk."""
    study = generate_uid()
    with TestClient(app) as c:
        files = [("files", (f"{i}.dcm", mr_instance(study, "1.2.3.9", position=i * 4.0))) for i in range(3)]
        assert c.post("/studies", headers=AUTH, files=files).status_code == 202
    app.state.store.ensure(study, instances=3)
    app.state.store.transition(study, StudyState.DONE)
    out = settings.results_dir / study
    out.mkdir(parents=True)
    (out / "report.json").write_text(json.dumps({"study_uid": study}))
    (out / "seg.dcm").write_bytes(mr_instance())
    return study


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_5xx_to_generated_requests(settings: Settings, mode: GenerationMode) -> None:
    app = create_app(settings.model_copy(update={"public_docs": True}))  # schemathesis reads the schema keyless
    telemetry.heartbeat(app.state.redis, settings.stream_prefix, "fuzz:1", "demo", "1", [])  # /readyz: 200
    known = _known_study(app, settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = sorted((r.ok() for r in schema.get_all_operations()), key=lambda op: op.method == "delete")
    assert len(operations) >= 14
    failures: list[str] = []
    seen: Counter = Counter()
    for operation in operations:
        strategy = operation.as_strategy(mode)
        if "{uid}" in operation.path and mode is GenerationMode.POSITIVE:
            strategy = st.one_of(strategy, operation.as_strategy(mode, path_parameters={"uid": known}))

        @given(case=strategy)
        @hypothesis_settings(
            max_examples=10,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case) -> None:
            with_key = case.call(headers=AUTH)
            seen[with_key.status_code // 100] += 1
            if with_key.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {with_key.status_code}: {with_key.text[:200]}"
                )
            without = case.call(headers={"Authorization": ""})
            if case.operation.path not in PUBLIC and without.status_code not in (401, 403):
                failures.append(f"{case.method} {case.formatted_path} without a key -> {without.status_code}")

        try:
            run()
        except Unsatisfiable:  # negative mode: an operation without parameters has no invalid input
            assert mode is GenerationMode.NEGATIVE
    assert not failures, "\n".join(failures[:20])
    # valid requests reach the handlers; invalid ones are refused with a 4xx
    assert seen[2 if mode is GenerationMode.POSITIVE else 4] > 0
