"""Prometheus metrics, ``/healthz`` and ``/readyz`` for every role.

Metric objects for all areas live here so their names and labels are decided once;
the listener, workers and SCP increment them. Label values are small closed sets
(message types, ACK codes, reasons, statuses) — never control ids or patient data.

Two kinds of numbers:

* **event counters** (messages, ACKs, rejects, mapping failures, C-FIND requests and
  latency, open associations) counted in the process that sees the event;
* **state read from Redis at scrape time** by
  :class:`bridge.ops.redis_metrics.RedisCollector` (queue depth, rq job states, workers
  alive, worklist items by status, dead letters), added by the roles' HTTP endpoint.

Under ``mwl-bridge run`` the role processes are children of the supervisor. The
supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` for them, so prometheus-client writes
their counters to files there and the supervisor's one HTTP port serves the sum
(:class:`prometheus_client.multiprocess.MultiProcessCollector`). A role started on its
own (``mwl-bridge listen --metrics-port 9101``) serves its own process's numbers.

Readiness: a role registers a check with :func:`register_readiness` (e.g. the listener
``register_readiness("mllp", lambda: server.is_serving())``); ``/readyz`` answers 200
only when every registered check passes, 503 otherwise, with a JSON body naming each
check. ``/healthz`` answers 200 while the process can serve HTTP at all.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from bridge.core.errors import ConfigError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: The registry every metric object below is registered in (not prometheus-client's
#: global one, so tests and embedding applications start clean).
REGISTRY = CollectorRegistry(auto_describe=True)

# -- listener ---------------------------------------------------------------------------
MESSAGES_RECEIVED = Counter(
    "mwl_messages_received",
    "HL7 messages received in a complete MLLP frame, by MSH-9 (e.g. ORM^O01; 'unknown').",
    ["message_type"],
    registry=REGISTRY,
)
ACKS = Counter(
    "mwl_acks",
    "ACKs sent, by MSA-1 code (AA, AE, AR, CA, CE, CR).",
    ["code"],
    registry=REGISTRY,
)
FRAMES_REJECTED = Counter(
    "mwl_frames_rejected",
    "MLLP frames or messages rejected before queueing, by reason "
    "(too_large, timeout, incomplete, junk, bad_msh, missing_final_cr, type, version, "
    "processing_id, charset, duplicate_control_id, store_unavailable, not_yet_applied).",
    ["reason"],
    registry=REGISTRY,
)
# -- workers ----------------------------------------------------------------------------
MAPPING_FAILURES = Counter(
    "mwl_mapping_failures",
    "Messages the workers could not parse or map (dead-lettered), by reason "
    "= HL7 table 0357 code (required_field, data_type, unknown_code, value_too_long, "
    "segment_sequence, internal; others code_<n>).",
    ["reason"],
    registry=REGISTRY,
)
ORDER_ANOMALIES = Counter(
    "mwl_order_anomalies",
    "Order messages the lifecycle treated specially, by kind (late_new_order, "
    "reused_number_new, reused_number_ignored, tombstone, unknown_order, "
    "final_order_message, repeated_new_order, repeated_new_order_rejected, "
    "merged_patient_redirect).",
    ["kind"],
    registry=REGISTRY,
)
PATIENT_EVENTS = Counter(
    "mwl_patient_events",
    "ADT events applied, by trigger event and outcome (updated, no_items, merged, "
    "merged_no_items, ignored).",
    ["event", "outcome"],
    registry=REGISTRY,
)
MESSAGES_LOST = Counter(
    "mwl_messages_lost",
    "ACKed messages that reached the head of the ingest line without their message hash "
    "(expired, evicted or deleted: raw bytes gone, never applied), dead-lettered with "
    "their id so the sender can be asked to resend; by reason (hash_missing). Any "
    "increase means an order the sender was told is safe is not in the worklist.",
    ["reason"],
    registry=REGISTRY,
)
ITEMS_EXPIRED = Counter(
    "mwl_items_expired",
    "Worklist items the workers' hygiene acted on, by SPS status before the action and "
    "action (purged: deleted after its retention; hidden, discontinued, none: the idle "
    "timeout's action, none = logged and counted only).",
    ["status", "action"],
    registry=REGISTRY,
)
MPPS_APPLIED = Counter(
    "mwl_mpps_applied",
    "MPPS status changes applied by the workers, by outcome (linked: items found and "
    "changed; unscheduled: no SPS named; unlinked: no item found).",
    ["outcome"],
    registry=REGISTRY,
)
MPPS_PATIENT_MISMATCH = Counter(
    "mwl_mpps_patient_mismatch",
    "Items an MPPS linked to whose Patient ID differs from the MPPS's (flagged on the "
    "instance, see mpps show).",
    registry=REGISTRY,
)
# -- outbound (procedure status back to the RIS) ----------------------------------------
OUTBOUND_MESSAGES = Counter(
    "mwl_outbound_messages",
    "Outbound HL7 messages settled or put off, by result (delivered: AA/CA; rejected: the "
    "RIS answered AE/CE, dead-lettered; dead_lettered: no positive reply after "
    "outbound.max_attempts sends; retried: a failed send, sent again after a backoff; lost: "
    "the record was gone when its turn came).",
    ["result"],
    registry=REGISTRY,
)
OUTBOUND_FAILURES = Counter(
    "mwl_outbound_send_failures",
    "Failed sends to the RIS, by kind (connect: refused, unreachable or TLS; timeout: no "
    "reply within outbound.ack_timeout_s; dropped: the connection closed before the reply; "
    "reject: AR/CR; invalid_reply: no MSA, an unknown MSA-1 or MSA-2 not our MSH-10).",
    ["kind"],
    registry=REGISTRY,
)
# -- SCP --------------------------------------------------------------------------------
CFIND_REQUESTS = Counter(
    "mwl_cfind_requests",
    "MWL C-FIND requests answered, by final status name (success, cancel, "
    "unable_to_process, out_of_resources, identifier_mismatch, refused).",
    ["status"],
    registry=REGISTRY,
)
CFIND_DURATION = Histogram(
    "mwl_cfind_duration_seconds",
    "Time from C-FIND request to the final response.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
RESPONSE_CHARSET_FALLBACKS = Counter(
    "mwl_response_charset_fallbacks",
    "Worklist items whose text the calling AE's forced response character set could not "
    "represent, by action (skip: not sent; transliterate: sent with the characters "
    "transliterated) and charset (the (0008,0005) value, from the settings).",
    ["action", "charset"],
    registry=REGISTRY,
)
MPPS_REQUESTS = Counter(
    "mwl_mpps_requests",
    "MPPS N-CREATE and N-SET requests answered, by op (n_create, n_set) and status "
    "(success, or the failure code in hex: 0106, 0110, 0111, 0112, 0117, 0120, 0121, "
    "0213).",
    ["op", "status"],
    registry=REGISTRY,
)
ASSOCIATIONS_OPEN = Gauge(
    "mwl_associations_open",
    "DICOM associations currently open on the SCP.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)

# -- readiness --------------------------------------------------------------------------
ReadinessCheck = Callable[[], bool]
_checks: dict[str, ReadinessCheck] = {}
_checks_lock = threading.Lock()


def register_readiness(name: str, check: ReadinessCheck) -> None:
    """Add (or replace) a named check; ``/readyz`` is 200 only when all return True."""
    with _checks_lock:
        _checks[name] = check


def unregister_readiness(name: str) -> None:
    with _checks_lock:
        _checks.pop(name, None)


def readiness() -> dict[str, bool]:
    """Run every registered check; a check that raises counts as not ready."""
    with _checks_lock:
        checks = dict(_checks)
    out: dict[str, bool] = {}
    for name, check in checks.items():
        try:
            out[name] = bool(check())
        except Exception:  # a broken check must make the role unready, not crash /readyz
            out[name] = False
    return out


# -- HTTP -------------------------------------------------------------------------------
def aggregate_registry(multiproc_dir: str) -> CollectorRegistry:
    """A registry that sums the metric files the child processes write."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
    return registry


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on a daemon thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        handler = _handler(registry)
        try:
            self._httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            # Port taken or address not local: the operator's setting, so exit 2 naming it.
            raise ConfigError(
                "obs.metrics_port", f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _handler(registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                checks = readiness()
                ok = all(checks.values())
                body = json.dumps({"ready": ok, "checks": checks}).encode() + b"\n"
                self._send(200 if ok else 503, body, "application/json")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the event log

    return Handler
