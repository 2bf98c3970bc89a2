"""pynetdicom event handlers: plain functions that get their dependencies and return DICOM statuses.

This is the edge where receive errors become DICOM: 0xA700 (out of resources: the PACS retries later),
0xC210 (cannot understand: retrying the same bytes will not help), 0x0110 (processing failure: a bug of
ours; logged with its traceback). Logs carry UIDs, sizes and statuses, never dataset contents.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import events

from service.errors import InvalidUIDError, ReceiveError, SpoolFullError, UndecodableDatasetError
from service.receive.spool import Spool

LOG = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210
PROCESSING_FAILURE = 0x0110

# A-ASSOCIATE-RJ: result 1 = rejected-permanent, source 1 = service user, reason 1 = no reason given
REJECT_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON = 0x01, 0x01, 0x01

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class ReceiveCounters:
    """Counts since start-up, for logs and metrics; updated from association threads."""

    stored: int = 0
    duplicates: int = 0
    ignored: int = 0
    bytes: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    _published: int = field(default=0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, status: int, size: int = 0, duplicate: bool = False, ignored: bool = False) -> None:
        with self._lock:
            if status == SUCCESS:
                self.stored += 1
                self.bytes += size
                self.duplicates += int(duplicate)
                self.ignored += int(ignored)
            else:
                self.refused[status] = self.refused.get(status, 0) + 1

    def take_new_instances(self) -> int:
        """New (non-duplicate) instances stored since the last call, for the cumulative Redis counter."""
        with self._lock:
            new = self.stored - self.duplicates - self._published
            self._published += new
            return new


def parse_networks(values: Sequence[str]) -> list[Network]:
    """IP addresses or CIDR networks from settings.allowed_ips ("10.0.0.5", "10.1.0.0/16", "::1")."""
    return [ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip()]


def handle_echo(event: events.Event) -> int:
    return SUCCESS


class InstanceTooLargeError(UndecodableDatasetError):
    """An instance over the configured maximum size (refused 0xC210: resending it cannot help)."""


def handle_store(event: events.Event, spool: Spool, counters: ReceiveCounters | None = None,
                 max_instance_bytes: int | None = None) -> int:
    """C-STORE: write the instance as received (file meta + the peer's encoded dataset) into the spool.

    With pynetdicom's STORE_RECV_CHUNKED_DATASET (as the listener runs) the dataset arrives in a temp file,
    which is copied to the spool in chunks: memory does not grow with the instance's size."""
    sop_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")[:64]
    try:
        received = _received_file(event)
        if received is None:
            data = event.encoded_dataset(include_meta=True)
            if max_instance_bytes is not None and len(data) > max_instance_bytes:
                raise InstanceTooLargeError(f"{len(data)} bytes, over the limit of {max_instance_bytes}")
            stored = spool.store_file_bytes(data)
        else:
            size = received.stat().st_size
            if max_instance_bytes is not None and size > max_instance_bytes:
                raise InstanceTooLargeError(f"{size} bytes, over the limit of {max_instance_bytes}")
            incoming = spool.new_incoming()
            try:
                shutil.copyfile(received, incoming)
            except OSError as exc:
                incoming.unlink(missing_ok=True)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise SpoolFullError("no space left copying a received instance") from exc
                raise ReceiveError(f"could not copy a received instance: {exc.strerror}") from exc
            stored = spool.store_incoming(incoming)
    except SpoolFullError as exc:
        LOG.error("C-STORE %s refused 0xA700: %s", sop_uid, exc)
        status = OUT_OF_RESOURCES
    except (UndecodableDatasetError, InvalidUIDError) as exc:
        LOG.warning("C-STORE %s refused 0xC210: %s", sop_uid, exc)
        status = CANNOT_UNDERSTAND
    except ReceiveError as exc:
        LOG.error("C-STORE %s refused 0xA700: %s", sop_uid, exc)
        status = OUT_OF_RESOURCES
    except Exception:
        LOG.exception("C-STORE %s refused 0x0110: unexpected error", sop_uid)
        status = PROCESSING_FAILURE
    else:
        LOG.debug(
            "C-STORE stored study=%s series=%s sop=%s ts=%s bytes=%d duplicate=%s ignored=%s",
            stored.study_uid,
            stored.series_uid,
            stored.sop_uid,
            stored.transfer_syntax_uid,
            stored.size,
            stored.duplicate,
            stored.ignored,
        )
        if counters is not None:
            counters.count(SUCCESS, stored.size, stored.duplicate, stored.ignored)
        return SUCCESS
    if counters is not None:
        counters.count(status)
    return status


def _received_file(event: events.Event) -> Path | None:
    """The temp file pynetdicom wrote the dataset to, or None when it kept the dataset in memory."""
    try:
        path = event.dataset_path
    except AttributeError:
        return None
    return Path(path[0] if isinstance(path, tuple) else path)


def handle_requested(event: events.Event, allowed_networks: Sequence[Network]) -> None:
    """A-ASSOCIATE-RQ received: refuse peers outside the IP allow-list before any negotiation.

    AE title checks and the association cap are pynetdicom's own (require_calling_aet,
    require_called_aet, maximum_associations), which answer with their proper A-ASSOCIATE-RJ reasons.
    """
    if not allowed_networks:
        return
    address = event.assoc.requestor.address
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    if ip is not None and getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    if ip is None or not any(ip in net for net in allowed_networks):
        LOG.warning("association from %s refused: address not in the allow-list", address)
        event.assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON)
        event.assoc.kill()  # as pynetdicom does after its own rejections


def handle_rejected(event: events.Event) -> None:
    LOG.warning(
        "association from %s (calling AE %s) rejected",
        event.assoc.requestor.address,
        event.assoc.requestor.ae_title,
    )
