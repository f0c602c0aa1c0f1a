"""``mwl-bridge mapping check FILE`` and ``mwl-bridge mapping test FILE MESSAGE.hl7``.

``check`` validates a mapping file (and the files it extends); errors name file, line
and key. ``test`` is the integrator's dry run: it maps a message file without Redis and
prints each resulting item as a DICOM dump (pydicom), then every warning (truncations,
defaults used, unmapped segments). Exit codes: 0 ok, 1 the message is rejected (the
HL7 error code and field are printed), 2 the mapping file is invalid.
"""

from __future__ import annotations

import argparse
import sys

from bridge.core.errors import MappingFileError, PermanentError
from bridge.core.settings import Settings
from bridge.hl7 import parse as hl7parse
from bridge.store.item import to_dataset
from bridge.worker.lifecycle import item_id, new_item
from bridge.worker.mapping.apply import PatientEvent, map_message, order_key
from bridge.worker.mapping.load import load_mapping

EXIT_REJECTED = 1
EXIT_BAD_MAPPING = 2


def check_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        mapping = load_mapping(args.file)
    except MappingFileError as exc:
        print(f"mapping error: {exc.args[0].split(': ', 1)[-1]}", file=sys.stderr)
        return EXIT_BAD_MAPPING
    print(
        f"{args.file}: OK ({len(mapping.rules)} attributes, {len(mapping.sps_rules)} SPS "
        f"attributes, {len(mapping.lifecycle)} lifecycle entries; "
        f"built from {' <- '.join(mapping.chain)})"
    )
    return 0


def test_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        mapping = load_mapping(args.file)
    except MappingFileError as exc:
        print(f"mapping error: {exc.args[0].split(': ', 1)[-1]}", file=sys.stderr)
        return EXIT_BAD_MAPPING
    with open(args.message, "rb") as fh:
        raw = fh.read()
    try:
        # The listener's charset rule with the same settings: what it would decide.
        m = settings.mllp
        msg = hl7parse.parse(raw, None, m.default_charset, m.sender_charsets)
        result = map_message(msg, mapping, settings.worker.local_timezone)
    except PermanentError as exc:
        print(
            f"REJECTED: HL7 error {int(exc.code)} ({exc.code.text}) at {exc.location or '-'}: {exc}"
        )
        return EXIT_REJECTED
    print(f"# message: version {result.version}, charset {result.charset}")
    if result.patient is not None:
        _print_patient_event(result.patient)
    n = 0
    for group in result.groups:
        action = group.action + (f":{group.status}" if group.status else "")
        print(
            f"# order {group.control}/{group.order_status} -> {action} "
            f"(placer {group.placer!r}, filler {group.filler!r})"
        )
        canonical = order_key(result.scope, group)
        for mi in group.items:
            n += 1
            item = new_item(item_id(canonical, mi.rpid, mi.spsid), canonical, mi)
            if group.status:
                item.sps["ScheduledProcedureStepStatus"] = group.status
            flag = "" if mi.complete else f"  (incomplete: {mi.missing} missing)"
            label = f" worklist {item.worklist!r}" if mapping.worklist is not None else ""
            print(f"## item {n} id {item.item_id}{label}{flag}")
            print(to_dataset(item.attrs))
    print(f"# {len(result.warnings)} warning(s)")
    for warning in result.warnings:
        print(f"WARNING: {warning}")
    return 0


def _print_patient_event(event: PatientEvent) -> None:
    """What an ADT message would change: per patient, the attributes it sets on the
    patient's open items, and for a merge the identifier it moves them from."""
    print(f"# patient event {event.event} -> {event.action}")
    for n, p in enumerate(event.patients, start=1):
        moved = f" (from {p.merged_pid!r}, issuer {p.merged_issuer!r})" if p.merged_pid else ""
        print(f"## patient {n}: id {p.pid!r}, issuer {p.issuer!r}{moved}")
        for keyword, value in {**p.attrs, **p.visit}.items():
            print(f"   {keyword} = {value!r}")
