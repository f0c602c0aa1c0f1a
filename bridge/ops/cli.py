"""``mwl-bridge``: one CLI, verb subcommands.

Every verb loads :class:`~bridge.settings.Settings` the same way (defaults → TOML file
→ environment → flags); an invalid setting prints one line naming it and exits with
code 2 before anything starts. Logging is configured here and nowhere else. The work of
each verb lives in the module that owns it, named in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from bridge import __version__
from bridge.core.errors import ConfigError
from bridge.core.logs import configure
from bridge.core.settings import Settings, load_settings
from bridge.hl7.charsets import check_settings as check_charsets
from bridge.ops.worklist_edit import LOCK_WAIT_S

EXIT_CONFIG = 2

#: verb (or "verb sub") → "module:function"; the function takes (settings, args) → exit code.
COMMANDS: dict[str, str] = {
    "run": "bridge.ops.supervisor:command",
    "listen": "bridge.ops.roles:listen_command",
    "worker": "bridge.ops.roles:worker_command",
    "scp": "bridge.ops.roles:scp_command",
    "outbound": "bridge.ops.roles:outbound_command",
    "send": "bridge.mllp.client:command",
    "find": "bridge.ops.find:command",
    "status": "bridge.ops.admin:status_command",
    "mapping check": "bridge.ops.mapping_commands:check_command",
    "mapping test": "bridge.ops.mapping_commands:test_command",
    "worklist list": "bridge.ops.admin:worklist_list",
    "worklist show": "bridge.ops.admin:worklist_show",
    "worklist delete": "bridge.ops.admin:worklist_delete",
    "worklist purge": "bridge.ops.admin:worklist_purge",
    "worklist import": "bridge.ops.worklist_import:command",
    "deadletter list": "bridge.ops.admin:deadletter_list",
    "deadletter show": "bridge.ops.admin:deadletter_show",
    "deadletter replay": "bridge.ops.admin:deadletter_replay",
    "deadletter drop": "bridge.ops.admin:deadletter_drop",
    "mpps list": "bridge.ops.mpps_commands:list_command",
    "mpps show": "bridge.ops.mpps_commands:show_command",
}

# Flags that set a setting: flag → (settings key, argparse kwargs). Each verb picks the
# groups it needs, so ``mwl-bridge listen --help`` shows only what ``listen`` uses.
_COMMON = {
    "--redis-url": ("redis.url", {"help": "Redis URL (default: start an embedded redis-server)"}),
    "--key-prefix": ("redis.key_prefix", {"help": "prefix of every Redis key (default mwl)"}),
    "--log-level": ("obs.log_level", {"help": "DEBUG, INFO, WARNING or ERROR"}),
    "--log-format": ("obs.log_format", {"help": "text (key=value) or json"}),
}
_MLLP = {
    "--mllp-host": ("mllp.host", {"help": "MLLP listen address (default 0.0.0.0)"}),
    "--mllp-port": ("mllp.port", {"help": "MLLP listen port (default 2575)"}),
    "--ack-mode": ("mllp.ack_mode", {"help": "commit (default) or application"}),
    "--max-frame-bytes": ("mllp.max_frame_bytes", {"help": "largest accepted frame"}),
    "--tls-cert": ("mllp.tls_cert_file", {"help": "PEM certificate: enables TLS"}),
    "--tls-key": ("mllp.tls_key_file", {"help": "PEM private key for --tls-cert"}),
    "--tls-client-ca": ("mllp.tls_client_ca_file", {"help": "CA file: require client certs"}),
}
_WORKER = {
    "--mapping": ("worker.mapping", {"metavar": "FILE", "help": "default mapping file"}),
    "--workers": ("worker.workers", {"help": "worker processes (run only; default 2)"}),
}
_SCP = {
    "--dicom-host": ("scp.host", {"help": "DICOM listen address (default 0.0.0.0)"}),
    "--dicom-port": ("scp.port", {"help": "DICOM listen port (default 11112)"}),
    "--ae-title": ("scp.ae_title", {"help": "the SCP's AE title (default MWL_BRIDGE)"}),
}
_OUTBOUND = {
    "--outbound-host": ("outbound.host", {"help": "the RIS's MLLP host for status messages"}),
    "--outbound-port": ("outbound.port", {"help": "the RIS's MLLP port (default 2576)"}),
}
_METRICS = {
    "--metrics-port": ("obs.metrics_port", {"help": "Prometheus/health HTTP port (0 = off)"}),
}


def _add_settings_flags(parser: argparse.ArgumentParser, *groups: dict[str, Any]) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="TOML settings file (or $MWL_BRIDGE_CONFIG)"
    )
    for group in (_COMMON, *groups):
        for flag, (key, kwargs) in group.items():
            parser.add_argument(flag, dest="set:" + key, default=None, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwl-bridge",
        description="HL7 v2 ORM^O01 over MLLP → DICOM Modality Worklist (C-FIND SCP).",
    )
    parser.add_argument("--version", action="version", version=f"mwl-bridge {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    p = verbs.add_parser("run", help="start listener, workers and SCP in one process tree")
    _add_settings_flags(p, _MLLP, _WORKER, _SCP, _OUTBOUND, _METRICS)
    p = verbs.add_parser("listen", help="run only the MLLP listener")
    _add_settings_flags(p, _MLLP, _METRICS)
    p = verbs.add_parser("worker", help="run only an rq worker (parse, map, apply)")
    _add_settings_flags(p, _WORKER, _METRICS)
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p = verbs.add_parser("scp", help="run only the MWL C-FIND SCP")
    _add_settings_flags(p, _SCP, _METRICS)
    p = verbs.add_parser(
        "outbound", help="run only the delivery of procedure status messages to the RIS"
    )
    _add_settings_flags(p, _OUTBOUND, _METRICS)
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")

    p = verbs.add_parser("send", help="send HL7 files over MLLP and print the ACKs")
    _add_settings_flags(p, _MLLP)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--host", default="127.0.0.1", help="listener host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listener port (default mllp.port)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each ACK")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--tls-ca", metavar="PEM", help="CA file to verify the listener (with --tls)")
    p.add_argument(
        "--tls-client-cert", metavar="PEM", help="client certificate+key PEM for mutual TLS"
    )

    p = verbs.add_parser("find", help="C-FIND the worklist and print a table")
    _add_settings_flags(p, _SCP)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="SCP port (default scp.port)")
    p.add_argument("--calling-ae", default="MWL_FIND")
    p.add_argument("--date", help="SPS start date or range (YYYYMMDD[-YYYYMMDD])")
    p.add_argument("--modality")
    p.add_argument("--station", help="Scheduled Station AE Title")
    p.add_argument("--patient-id")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = verbs.add_parser("status", help="queue depth, workers, items by status, dead letters")
    _add_settings_flags(p)
    p.add_argument("--json", action="store_true")

    mapping = verbs.add_parser("mapping", help="check and dry-run mapping files")
    msub = mapping.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = msub.add_parser("check", help="validate a mapping file")
    _add_settings_flags(p, _WORKER)
    p.add_argument("file", metavar="FILE")
    p = msub.add_parser("test", help="map an HL7 message and print the items and warnings")
    _add_settings_flags(p, _WORKER)
    p.add_argument("file", metavar="FILE", help="mapping file")
    p.add_argument("message", metavar="MESSAGE.hl7")

    worklist = verbs.add_parser("worklist", help="inspect and manage worklist items")
    wsub = worklist.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = wsub.add_parser("list", help="list items")
    _add_settings_flags(p)
    p.add_argument("--date", help="SPS start date or range (YYYYMMDD[-YYYYMMDD])")
    p.add_argument("--modality")
    p.add_argument("--station")
    p.add_argument("--status")
    p.add_argument("--json", action="store_true")
    p = wsub.add_parser("show", help="show one item as a DICOM dump")
    _add_settings_flags(p)
    p.add_argument("item_id", metavar="ID")
    p.add_argument("--json", action="store_true")
    lock_wait = {
        "type": float,
        "default": LOCK_WAIT_S,
        "metavar": "SECONDS",
        "help": f"wait this long for the workers' apply lock (default {LOCK_WAIT_S:g})",
    }
    p = wsub.add_parser("delete", help="delete one item (under the workers' apply lock)")
    _add_settings_flags(p)
    p.add_argument("item_id", metavar="ID")
    p.add_argument("--lock-wait", **lock_wait)  # type: ignore[arg-type]
    p = wsub.add_parser("purge", help="delete items scheduled before a date")
    _add_settings_flags(p)
    p.add_argument("--before", required=True, metavar="YYYYMMDD")
    p.add_argument("--lock-wait", **lock_wait)  # type: ignore[arg-type]
    p.add_argument("--dry-run", action="store_true", help="count, do not delete")
    p.add_argument("--json", action="store_true")
    p = wsub.add_parser(
        "import", help="import DICOM worklist files (wlmscpfs .wl folders, Orthanc, .dcm)"
    )
    _add_settings_flags(p, {"--mapping": _WORKER["--mapping"]})
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    p.add_argument("--dry-run", action="store_true", help="report, write nothing")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--worklist",
        metavar="LABEL",
        help="worklist label (called AE) of files not in a wlmscpfs per-AE folder",
    )
    p.add_argument("--lock-wait", **lock_wait)  # type: ignore[arg-type]  (per file)

    dead = verbs.add_parser("deadletter", help="rejected or failed messages")
    dsub = dead.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = dsub.add_parser("list", help="list dead letters")
    _add_settings_flags(p)
    p.add_argument("--json", action="store_true")
    for name, text in (
        ("show", "show one dead letter (metadata and raw message)"),
        ("replay", "queue a dead letter's message again"),
        ("drop", "delete a dead letter"),
    ):
        p = dsub.add_parser(name, help=text)
        _add_settings_flags(p)
        p.add_argument("dead_id", metavar="ID")
        if name in ("show", "replay"):
            p.add_argument("--json", action="store_true")

    mpps = verbs.add_parser("mpps", help="MPPS instances reported by modalities")
    psub = mpps.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    p = psub.add_parser("list", help="list MPPS instances, newest first")
    _add_settings_flags(p)
    p.add_argument("--status", help="IN PROGRESS, COMPLETED or DISCONTINUED")
    p.add_argument(
        "--limit", type=int, default=100, metavar="N", help="show at most N (default 100, 0 = all)"
    )
    p.add_argument("--json", action="store_true")
    p = psub.add_parser("show", help="one MPPS instance: status, links, flags, attributes")
    _add_settings_flags(p)
    p.add_argument("uid", metavar="UID", help="SOP Instance UID")
    p.add_argument("--json", action="store_true")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    flags = {
        name[4:]: value
        for name, value in vars(args).items()
        if name.startswith("set:") and value is not None
    }
    settings = load_settings(flags, config_file=getattr(args, "config", None))
    # The charset names are checked against the table in bridge.hl7 (core, which loads
    # settings, cannot import it): every verb exits 2 on a name neither stage can decode.
    check_charsets(settings.mllp)
    return settings


def _resolve(verb: str) -> Callable[[Settings, argparse.Namespace], int]:
    module_name, _, func = COMMANDS[verb].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, func)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verb = args.verb + (f" {args.sub}" if getattr(args, "sub", None) else "")
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"mwl-bridge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure(settings.obs.log_level, settings.obs.log_format, settings.obs.log_phi)
    try:
        return _resolve(verb)(settings, args)
    except ConfigError as exc:
        print(f"mwl-bridge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
