"""The DICOM listener: a pynetdicom AE accepting C-ECHO and every storage SOP class into the spool."""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass, field

from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from service.errors import ConfigError
from service.receive.handlers import (
    ReceiveCounters,
    handle_echo,
    handle_rejected,
    handle_requested,
    handle_store,
    parse_networks,
)
from service.receive.spool import Spool

LOG = logging.getLogger(__name__)

# pynetdicom accepts, per presentation context, the first syntax of *our* list that the peer proposed. A PACS
# holding compressed images proposes their syntax and the uncompressed ones in one context: listing
# lossless compression first keeps the data as the PACS holds it; listing lossy syntaxes last never asks a
# PACS to compress lossily what it holds uncompressed. Only syntaxes the worker can decode (pydicom with
# the pylibjpeg plugins) are offered; a peer holding anything else sends it decompressed.
LOSSLESS_SYNTAXES = [
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K RPCL Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
]
UNCOMPRESSED_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
]
LOSSY_SYNTAXES = [
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.51",  # JPEG Extended 12 bit
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline 8 bit
]
STORAGE_SYNTAXES = LOSSLESS_SYNTAXES + UNCOMPRESSED_SYNTAXES + LOSSY_SYNTAXES


def build_ae(settings) -> AE:
    """An AE accepting Verification and all storage SOP classes in STORAGE_SYNTAXES (uncompressed, deflate,
    JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE), with the calling-AE allow-list, the
    called-AE check and the association cap of the settings."""
    ae = AE(ae_title=settings.ae_title)
    ae.add_supported_context(Verification, UNCOMPRESSED_SYNTAXES)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, STORAGE_SYNTAXES)
    ae.require_called_aet = settings.require_called_aet
    ae.require_calling_aet = list(settings.allowed_calling_aets)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = 0  # no limit: the peer chooses; fewer, larger PDUs are faster
    return ae


def make_ssl_context(settings) -> ssl.SSLContext | None:
    """TLS when a certificate and key are set; with a CA, peers must present a certificate it signed."""
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigError("TLS needs both LUMBAR_AI_TLS_CERT and LUMBAR_AI_TLS_KEY")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_ca is not None:
            context.load_verify_locations(cafile=settings.tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS certificate, key or CA could not be loaded: {exc}") from exc
    return context


class _SharedContexts(list):
    """The server's supported contexts, handed to each association as they are.

    pynetdicom deep-copies the acceptor's supported contexts for every association it accepts: with
    every storage SOP class in 16 transfer syntaxes that is thousands of validated UIDs, tens of ms of
    CPU per association under the GIL. Negotiation only reads them, so one shared list is safe.
    """

    def __deepcopy__(self, memo: dict) -> _SharedContexts:
        return self


@dataclass
class Listener:
    """A running listener; stop() closes the socket and ends its associations."""

    server: ThreadedAssociationServer
    counters: ReceiveCounters = field(default_factory=ReceiveCounters)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()


def start_listener(settings, spool: Spool, host: str | None = None, port: int | None = None) -> Listener:
    """Start accepting associations in background threads."""
    # datasets arrive in temp files, not in memory: sixteen associations sending 200 MB instances would
    # otherwise hold them all at once (a process-wide pynetdicom setting)
    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = build_ae(settings)
    counters = ReceiveCounters()
    handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [spool, counters, settings.max_instance_mb * 1024 * 1024]),
        (evt.EVT_REQUESTED, handle_requested, [parse_networks(settings.allowed_ips)]),
        (evt.EVT_REJECTED, handle_rejected),
    ]
    address = (host or settings.listen_host, settings.listen_port if port is None else port)
    try:
        server = ae.start_server(
            address, block=False, ssl_context=make_ssl_context(settings), evt_handlers=handlers
        )
    except OSError as exc:
        raise ConfigError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror}") from exc
    server.contexts = _SharedContexts(server.contexts)
    # accepted sockets inherit TCP_NODELAY from the listening socket on Linux: no Nagle delay on replies
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    LOG.info(
        "listening as %s on %s:%d (TLS %s, calling AEs %s, IPs %s, max %d associations)",
        settings.ae_title,
        address[0],
        server.server_address[1],
        "on" if server.ssl_context else "off",
        ",".join(settings.allowed_calling_aets) or "any",
        ",".join(settings.allowed_ips) or "any",
        settings.max_associations,
    )
    return Listener(server, counters)
