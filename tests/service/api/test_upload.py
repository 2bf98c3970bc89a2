"""POST /studies and POST /dicomweb/studies store instances into the spool exactly as a C-STORE would."""

from __future__ import annotations

import io
import zipfile

from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from service.config import Settings
from service.receive.spool import Spool
from tests.service.api.conftest import AUTH, mr_instance


def _spooled(settings: Settings, study_uid: str) -> dict[str, bytes]:
    spool = Spool.from_settings(settings)
    return {f.sop_uid: f.path.read_bytes() for f in spool.instances(study_uid)}


def test_upload_stores_files_byte_for_byte_and_answers_202_with_status_urls(
    client: TestClient, settings: Settings
) -> None:
    study = generate_uid()
    sops = [generate_uid() for _ in range(3)]
    files = {sop: mr_instance(study, "1.2.3.4", sop, position=i) for i, sop in enumerate(sops)}
    response = client.post(
        "/studies",
        headers=AUTH,
        files=[("files", (f"{i}.dcm", data)) for i, data in enumerate(files.values())],
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["rejected"] == []
    assert [(s["study_uid"], s["instances"], s["duplicates"]) for s in body["studies"]] == [(study, 3, 0)]
    assert body["studies"][0]["status_url"].endswith(f"/studies/{study}")
    assert _spooled(settings, study) == files
    # the study is visible at once, before the assembler has recorded it
    detail = client.get(f"/studies/{study}", headers=AUTH).json()
    assert (detail["state"], detail["instances"]) == ("received", 3)


def test_upload_again_is_idempotent(client: TestClient) -> None:
    data = mr_instance()
    client.post("/studies", headers=AUTH, files=[("files", ("a.dcm", data))])
    body = client.post("/studies", headers=AUTH, files=[("files", ("a.dcm", data))]).json()
    assert body["studies"][0]["duplicates"] == 1


def test_zip_upload_stores_every_member(client: TestClient, settings: Settings) -> None:
    study = generate_uid()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(4):
            archive.writestr(f"DICOM/IM{i}", mr_instance(study, "1.2.3.5", position=i))
        archive.writestr("__MACOSX/._IM0", b"resource fork")
    response = client.post("/studies", headers=AUTH, files=[("files", ("study.zip", buffer.getvalue()))])
    assert response.status_code == 202, response.text
    assert len(_spooled(settings, study)) == 4


def test_non_dicom_file_is_named_in_415_and_good_files_stay_stored(
    client: TestClient, settings: Settings
) -> None:
    study = generate_uid()
    good = [mr_instance(study, "1.2.3.6", position=i) for i in range(2)]
    response = client.post(
        "/studies",
        headers=AUTH,
        files=[
            ("files", ("first.dcm", good[0])),
            ("files", ("notes.txt", b"this is not DICOM")),
            ("files", ("second.dcm", good[1])),
        ],
    )
    assert response.status_code == 415
    body = response.json()
    assert "notes.txt" in body["detail"]
    assert [r["file"] for r in body["rejected"]] == ["notes.txt"]
    assert body["studies"][0]["instances"] == 2
    assert sorted(_spooled(settings, study).values()) == sorted(good)


def test_truncated_dicom_file_is_refused_with_400_and_its_reason(client: TestClient) -> None:
    response = client.post("/studies", headers=AUTH, files=[("files", ("cut.dcm", mr_instance()[:300]))])
    assert response.status_code == 400
    [rejected] = response.json()["rejected"]
    assert rejected["file"] == "cut.dcm" and rejected["reason"].startswith("DICOM file cannot be read: ")


def test_truncated_dicom_member_of_a_zip_is_named(client: TestClient) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ok.dcm", mr_instance())
        archive.writestr("cut.dcm", mr_instance()[:300])
    body = client.post("/studies", headers=AUTH, files=[("files", ("s.zip", buffer.getvalue()))]).json()
    assert [r["file"] for r in body["rejected"]] == ["s.zip:cut.dcm"]
    assert body["studies"][0]["instances"] == 1


def test_path_traversal_uid_is_refused_with_400(client: TestClient, settings: Settings) -> None:
    response = client.post(
        "/studies", headers=AUTH, files=[("files", ("evil.dcm", mr_instance("1.2/../../x")))]
    )
    assert response.status_code == 400
    assert "evil.dcm" in response.json()["detail"]
    assert not any(p.name == "x" for p in settings.data_dir.rglob("*"))


def test_body_over_the_limit_is_413_by_content_length(client: TestClient) -> None:
    big = b"\0" * (3 * 1024 * 1024)  # the fixture's limit is 2 MiB
    response = client.post("/studies", headers=AUTH, files=[("files", ("big.dcm", big))])
    assert response.status_code == 413
    assert "LUMBAR_AI_MAX_UPLOAD_MB" in response.json()["detail"]


def test_chunked_body_over_the_limit_is_413_while_streaming(client: TestClient) -> None:
    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.dcm"\r\n\r\n'
        for _ in range(40):
            yield b"\0" * (128 * 1024)

    response = client.post(
        "/studies", headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"}, content=chunks()
    )
    assert response.status_code == 413


def test_zip_that_expands_past_the_limit_is_413(client: TestClient) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.dcm", b"\0" * (5 * 1024 * 1024))
    assert len(buffer.getvalue()) < 100_000
    response = client.post("/studies", headers=AUTH, files=[("files", ("bomb.zip", buffer.getvalue()))])
    assert response.status_code == 413
    assert "bomb.zip" in response.json()["detail"]


def test_upload_without_files_or_as_json_is_refused(client: TestClient) -> None:
    fields_only = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b--\r\n'
    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=b"}
    assert client.post("/studies", headers=headers, content=fields_only).status_code == 400
    assert client.post("/studies", headers=AUTH, data={"x": "1"}).status_code == 415
    assert client.post("/studies", headers=AUTH, json={"files": []}).status_code == 415


# -- STOW-RS --------------------------------------------------------------------------------------------


def _related(parts: list[tuple[str, bytes]], boundary: str = "stow-boundary") -> tuple[bytes, str]:
    body = b""
    for content_type, data in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_stow_stores_all_and_answers_200_with_referenced_sops(client: TestClient, settings: Settings) -> None:
    study = generate_uid()
    instances = [mr_instance(study, "1.2.3.7", position=i) for i in range(3)]
    body, content_type = _related([("application/dicom", d) for d in instances])
    response = client.post("/dicomweb/studies", headers={**AUTH, "Content-Type": content_type}, content=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    refs = response.json()["00081199"]["Value"]
    assert len(refs) == 3
    assert {r["00081150"]["Value"][0] for r in refs} == {"1.2.840.10008.5.1.4.1.1.4"}
    assert sorted(_spooled(settings, study).values()) == sorted(instances)


def test_stow_partial_failure_is_202_with_failed_sop_sequence(client: TestClient) -> None:
    good = mr_instance()
    bad_sop = generate_uid()
    truncated = mr_instance(sop_uid=bad_sop)[:-100]  # pixel data cut short
    body, content_type = _related([("application/dicom", good), ("application/dicom", truncated)])
    response = client.post("/dicomweb/studies", headers={**AUTH, "Content-Type": content_type}, content=body)
    assert response.status_code == 202
    failed = response.json()["00081198"]["Value"]
    assert len(failed) == 1
    assert failed[0]["00081197"]["Value"] == [0xC000]
    assert failed[0]["00081155"]["Value"] == [bad_sop]


def test_stow_with_nothing_stored_is_409(client: TestClient) -> None:
    body, content_type = _related([("application/dicom", b"garbage")])
    response = client.post("/dicomweb/studies", headers={**AUTH, "Content-Type": content_type}, content=body)
    assert response.status_code == 409
    assert "00081199" not in response.json()


def test_stow_refuses_other_media_types_with_415(client: TestClient) -> None:
    body, _ = _related([("application/dicom", mr_instance())])
    for content_type in (
        'multipart/related; type="application/dicom+xml"; boundary=stow-boundary',
        "application/dicom",
        "multipart/form-data; boundary=stow-boundary",
    ):
        response = client.post(
            "/dicomweb/studies", headers={**AUTH, "Content-Type": content_type}, content=body
        )
        assert response.status_code == 415, content_type


def test_stow_malformed_body_is_400(client: TestClient) -> None:
    response = client.post(
        "/dicomweb/studies",
        headers={**AUTH, "Content-Type": 'multipart/related; type="application/dicom"; boundary=zz'},
        content=b"no boundary anywhere",
    )
    assert response.status_code == 400


def _capped_client(settings: Settings, **overrides) -> TestClient:
    from service.api.app import create_app

    return TestClient(create_app(settings.model_copy(update={"max_upload_mb": 50, **overrides})))


def test_a_file_over_the_instance_limit_is_413_and_the_others_stay_stored(settings: Settings) -> None:
    study = generate_uid()
    good = mr_instance(study)
    with _capped_client(settings, max_instance_mb=1) as client:
        response = client.post("/studies", headers=AUTH, files=[
            ("files", ("huge.dcm", b"\0" * (2 * 1024 * 1024))), ("files", ("good.dcm", good))])
    assert response.status_code == 413
    assert [r["file"] for r in response.json()["rejected"]] == ["huge.dcm"]
    assert "instance size limit" in response.json()["rejected"][0]["reason"]
    assert len(_spooled(settings, study)) == 1
    assert not any((settings.spool_dir / ".incoming").iterdir())  # nothing left behind


def test_a_zip_bomb_member_over_the_instance_limit_is_413_without_being_expanded(settings: Settings) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.dcm", b"\0" * (20 * 1024 * 1024))
        archive.writestr("good.dcm", mr_instance())
    with _capped_client(settings, max_instance_mb=1) as client:
        response = client.post("/studies", headers=AUTH, files=[("files", ("bombs.zip", buffer.getvalue()))])
    assert response.status_code == 413
    assert [r["file"] for r in response.json()["rejected"]] == ["bombs.zip:bomb.dcm"]
    assert response.json()["studies"][0]["instances"] == 1


def test_uploads_beyond_the_concurrent_limit_get_429_with_retry_after(settings: Settings) -> None:
    with _capped_client(settings, max_concurrent_uploads=1) as client:
        client.app.state.uploads_in_progress = 1  # one upload holds the only slot
        response = client.post("/studies", headers=AUTH, files=[("files", ("a.dcm", mr_instance()))])
        assert response.status_code == 429 and response.headers["retry-after"] == "5"
        client.app.state.uploads_in_progress = 0
        assert client.post("/studies", headers=AUTH, files=[("files", ("a.dcm", mr_instance()))]).status_code == 202


def test_no_log_line_of_an_upload_holds_the_patients_name_id_or_birth_date(client: TestClient) -> None:
    """Through the API's own log handler (the one `lumbar-ai api` installs), at DEBUG, with every library
    warning logged: an invalid birth date and a name without a caret are what libraries warn about."""
    import pydicom

    from tests.conftest import service_log_text

    ds = pydicom.dcmread(io.BytesIO(mr_instance()))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Zyxwvut Qponml", "PID-SECRET-8842", "19xx0101"
    data = io.BytesIO()
    ds.save_as(data, enforce_file_format=True)
    with service_log_text() as buffer:
        response = client.post("/studies", headers=AUTH, files=[("files", ("a.dcm", data.getvalue()))])
        study = response.json()["studies"][0]["study_uid"]
        assert client.get(f"/studies/{study}", headers=AUTH).status_code == 200
    assert response.status_code == 202, response.text
    text = buffer.getvalue()
    assert "/studies" in text  # the handler saw the requests
    for secret in ("Zyxwvut", "Qponml", "PID-SECRET-8842", "19xx0101"):
        assert secret not in text
