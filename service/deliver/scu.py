"""C-STORE of result files to one DICOM destination over one association.

Every failure (refused connection, rejected association, no accepted presentation context, a failure
status, a timeout) becomes a DeliveryError whose message says what happened, with UIDs and status codes
only; the outbox decides whether to retry. Warning statuses (0xB000, 0xB006, 0xB007) count as stored, as
PS3.4 says they do.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.presentation import build_context

from service.config import Destination, Settings
from service.errors import DeliveryError

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
WARNING_STATUSES = {0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Stored:
    sop_instance_uid: str
    status: int


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Client TLS: verify the destination against settings.tls_ca (system CAs when unset); our certificate
    and key when the destination asks for client authentication."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.tls_ca) if settings.tls_ca else None)
    if settings.tls_cert and settings.tls_key:
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


def describe(destination: Destination) -> str:
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def send_files(
    destination: Destination,
    paths: Sequence[Path],
    calling_ae: str,
    timeout_s: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> list[Stored]:
    """Store every file over one association; DeliveryError unless all were stored."""
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise DeliveryError(f"result file {Path(path).name} cannot be read: {exc}") from exc
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    sop_classes = sorted({str(ds.SOPClassUID) for ds in datasets})
    ae.requested_contexts = [build_context(uid, TRANSFER_SYNTAXES) for uid in sop_classes]
    tls_args = None
    if destination.tls:
        tls_args = (tls, destination.host) if tls is not None else (ssl.create_default_context(), destination.host)
    name = describe(destination)
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"{name}: cannot connect ({exc})") from exc
    if not assoc.is_established:
        if assoc.is_rejected:
            reason = "association rejected"
        elif assoc.is_aborted:
            reason = "association aborted (connection refused or closed)"
        else:
            reason = "no association (destination unreachable)"
        raise DeliveryError(f"{name}: {reason}")
    stored: list[Stored] = []
    try:
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            accepted = [c for c in assoc.accepted_contexts if c.abstract_syntax == ds.SOPClassUID]
            if not accepted:
                raise DeliveryError(f"{name}: SOP class {ds.SOPClassUID} not accepted")
            status = assoc.send_c_store(ds)
            if "Status" not in status:
                raise DeliveryError(f"{name}: no C-STORE response for {uid} (timeout or abort)")
            code = int(status.Status)
            if code != 0x0000 and code not in WARNING_STATUSES:
                raise DeliveryError(f"{name}: C-STORE of {uid} failed with status 0x{code:04X}")
            stored.append(Stored(uid, code))
            log.info("stored %s on %s (status 0x%04X)", uid, name, code)
    finally:
        if assoc.is_established:
            assoc.release()
    return stored
