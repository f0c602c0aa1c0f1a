"""The Modality Worklist SCP: Application Entity set-up, start/stop, the ``scp`` verb.

Accepts Modality Worklist Information Model – FIND (1.2.840.10008.5.1.4.31), Modality
Performed Procedure Step (1.2.840.10008.3.1.2.3.3, N-CREATE and N-SET) and Verification
(1.2.840.10008.1.1) with Implicit and Explicit VR Little Endian, on one AE and port.
Handlers live in :mod:`bridge.scp.handlers` (C-FIND, C-ECHO) and :mod:`bridge.scp.mpps`;
each association runs in its own pynetdicom thread with the shared (thread-safe, pooled)
Redis client.

Association policy: if ``scp.allowed_calling_aes`` is set, any other calling AE title
is rejected by pynetdicom with A-ASSOCIATE-RJ result 1 (rejected-permanent), source 1
(DICOM UL service-user), reason 3 (calling AE title not recognised). The called AE title
is not checked (it selects the logical worklist when ``scp.per_called_ae_worklists``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from bridge.core.errors import ConfigError
from bridge.core.logs import fields
from bridge.core.settings import Settings
from bridge.scp import pynetdicom_compat
from bridge.scp.handlers import handle_conn_close, handle_conn_open, handle_echo, handle_find
from bridge.scp.mpps import handle_n_create, handle_n_set
from bridge.scp.mpps_store import MppsStore
from bridge.scp.response import ResponseCache
from bridge.store.connections import sync_client
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
#: FIND models we do not serve; with ``scp.answer_other_find_models_with_0122`` their
#: contexts are accepted so a C-FIND on them gets an explicit 0122 instead of a context
#: rejection (pynetdicom itself never answers 0122 for C-FIND).
OTHER_FIND_MODELS = [
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
]


def build_ae(settings: Settings) -> AE:
    """The configured Application Entity (not yet listening)."""
    scp = settings.scp
    pynetdicom_compat.hide_identifiers()  # no patient names or IDs in its INFO logs
    ae = AE(ae_title=scp.ae_title)
    ae.add_supported_context(ModalityWorklistInformationFind, TRANSFER_SYNTAXES)
    ae.add_supported_context(ModalityPerformedProcedureStep, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
    if scp.answer_other_find_models_with_0122:
        for model in OTHER_FIND_MODELS:
            ae.add_supported_context(model, TRANSFER_SYNTAXES)
    ae.maximum_associations = scp.max_associations
    ae.acse_timeout = scp.acse_timeout_s
    ae.dimse_timeout = scp.dimse_timeout_s
    ae.network_timeout = scp.network_timeout_s
    ae.require_called_aet = False
    ae.require_calling_aet = list(scp.allowed_calling_aes)
    return ae


class MwlScp:
    """In-process SCP: ``start()`` listens in background threads, ``stop()`` closes the
    socket, aborts open associations and waits for them."""

    def __init__(
        self,
        settings: Settings,
        store: WorklistStore | None = None,
        mpps: MppsStore | None = None,
    ) -> None:
        self.settings = settings
        self._client = None
        if store is None or mpps is None:
            if not settings.redis.url:
                raise ConfigError("redis.url", "the scp needs the Redis URL of the worklist store")
            self._client = sync_client(settings.redis)
            keys = Keys(settings.redis.key_prefix)
            store = store or WorklistStore(self._client, keys)
            mpps = mpps or MppsStore(
                self._client,
                keys,
                retention_s=settings.scp.mpps_retention_s,
                max_retries=settings.worker.max_retries,
            )
        self.store = store
        self.mpps = mpps
        self.ae = build_ae(settings)
        self.cache = ResponseCache(settings.scp.response_cache_entries)
        self._server: ThreadedAssociationServer | None = None

    def is_serving(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound port (useful with ``scp.port = 0``)."""
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    def start(self) -> int:
        scp = self.settings.scp
        handlers: list[Any] = [
            (evt.EVT_C_FIND, handle_find, [self.store, scp, self.cache]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_N_CREATE, handle_n_create, [self.mpps]),
            (evt.EVT_N_SET, handle_n_set, [self.mpps]),
            (evt.EVT_CONN_OPEN, handle_conn_open),
            (evt.EVT_CONN_CLOSE, handle_conn_close),
        ]
        try:
            self._server = self.ae.start_server(
                (scp.host, scp.port), block=False, evt_handlers=handlers
            )
        except OSError as exc:
            # Exit code 2 rather than a crash: `mwl-bridge run` must not restart a role
            # forever when its port is taken.
            raise ConfigError("scp.port", f"cannot listen on {scp.host}:{scp.port}: {exc}") from exc
        log.info(
            "scp.listening",
            extra=fields(
                host=scp.host,
                port=self.port,
                ae_title=scp.ae_title,
                allowed_calling_aes=",".join(scp.allowed_calling_aes) or "*",
            ),
        )
        return self.port

    def stop(self, grace_s: float | None = None) -> None:
        if self._server is not None:
            # Stop accepting, let running associations finish for a moment, then abort
            # whatever is left (a modality polling again simply reconnects later).
            self._server.shutdown()
            self._server = None
            grace = self.settings.scp.shutdown_grace_s if grace_s is None else grace_s
            deadline = time.monotonic() + grace
            while self.ae.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in self.ae.active_associations:
                assoc.abort()
            for assoc in self.ae.active_associations:
                assoc.join(timeout=2.0)
            log.info("scp.stopped")
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> MwlScp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
