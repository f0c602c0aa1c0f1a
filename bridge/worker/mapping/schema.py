"""The validated shape of a mapping file (see ``mappings/README.md`` for the format).

A :class:`Mapping` holds variables, lookup tables, the ORC-1×ORC-5 lifecycle table and
one :class:`Rule` per target DICOM attribute. Top-level rules fill the item; rules under
``ScheduledProcedureStepSequence`` fill its one item. A rule tries its
:class:`Source` entries in order (fallbacks) and keeps the first that yields a value,
or joins all of them when ``join`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.hl7.message import PathSpec

#: Value transforms (see ``transforms.py``).
TRANSFORMS = (
    "text",  # the first leaf, unescaped (default)
    "full",  # every component joined by ^ (e.g. a PL location)
    "ts_date",  # HL7 TS → DICOM DA (YYYYMMDD), zone converted
    "ts_time",  # HL7 TS → DICOM TM (HHMMSS), zone converted
    "xpn_pn",  # XPN family^given^middle^suffix^prefix^degree → PN
    "xpn_pn_groups",  # every XPN repetition → one PN, groups by XPN-8 (A=I=P)
    "xcn_pn",  # XCN id^family^given^middle^suffix^prefix^degree → PN
    "code_item",  # code triplet → one Code Sequence item
    "charset",  # HL7 table 0211 name → DICOM Specific Character Set
    "upper",
)

#: What a lookup table does with a value it does not list.
ON_MISSING = ("reject", "skip", "keep", "empty")

#: What a too-long value does (per VR maximum length, PS3.5 Table 6.2-1).
TOO_LONG = ("truncate", "reject")

#: How order numbers are scoped (``order_scope``).
ORDER_SCOPES = ("global", "sender")

#: What an ADT event does to the worklist (the ``patient: events`` table; HL7 v2.5 ch. 3,
#: IHE RAD-12 Patient Update / ITI-30): ``update`` the patient and visit attributes of
#: every open item of the patient, ``patient`` the patient attributes only (A31: its PV1
#: is a placeholder), ``visit`` the visit attributes only, ``merge`` the patient in MRG-1
#: into the one in PID-3 (A40, A34, A36), ``change_id`` the identifier in MRG-1 to the one
#: in PID-3 (A47), ``ignore`` (counted, no change; A35 merges accounts only).
PATIENT_ACTIONS = ("update", "patient", "visit", "merge", "change_id", "ignore")

#: Lifecycle actions (see ``bridge.worker.lifecycle``).
ACTIONS = ("create", "update", "status", "final", "hide", "show", "ignore")


@dataclass(frozen=True)
class Source:
    """One place a value may come from: an HL7 path, ``@Keyword`` (an attribute
    mapped earlier in the same item) or a constant, then optional per-source steps."""

    path: PathSpec | None = None
    ref: str = ""  # "@Keyword" without the @
    const: str | None = None
    transform: str = ""
    table: str = ""
    on_missing: str = ""
    regex: str = ""
    components: tuple[int, ...] = ()  # code_item: value, scheme, meaning
    #: Use this source only while the mapping variable of this name is true.
    when: str = ""
    #: Skip this source (try the next) when its value is longer than the rule's VR allows,
    #: instead of truncating or rejecting it.
    if_fits: bool = False
    #: When the order has several OBRs, append ``.<OBR-1 set ID or position>`` so that a
    #: value taken from the order (not the OBR) stays unique per procedure.
    per_obr: bool = False
    #: A value from this source is a last-resort fallback: the worker logs a WARNING.
    warn: bool = False
    line: int = 0

    @property
    def location(self) -> str:
        if self.path is not None:
            return self.path.location
        return f"@{self.ref}" if self.ref else "const"


@dataclass(frozen=True)
class Rule:
    keyword: str
    sources: tuple[Source, ...]
    transform: str = "text"
    table: str = ""
    on_missing: str = "reject"
    regex: str = ""
    components: tuple[int, ...] = (1, 3, 2)
    join: str | None = None  # join every source's values with this separator
    multi: bool = False  # keep every value (multi-valued attribute) instead of the first
    required: bool = False  # Type 1: missing → HL7 101
    default: str | None = None  # used when absent, only when an item is created
    generate: str = ""  # "study_uid": deterministic 2.25 UID when absent
    too_long: str = "truncate"
    partial: str = "reject"  # ts_date/ts_time on reduced precision: reject | empty
    zone: str = "convert"  # ts_*: convert the TS offset to the local zone | keep
    vr: str = ""
    max_length: int = 0
    scheme_default: str = ""
    #: ``warn``: an absent value is logged as a WARNING (not an error: the item is still
    #: made, e.g. without a station); "" = nothing said.
    missing: str = ""
    line: int = 0

    @property
    def location(self) -> str:
        """The HL7 field named in errors: the first HL7 source."""
        for s in self.sources:
            if s.path is not None:
                return s.path.location
        return self.keyword


@dataclass
class PatientRules:
    """The ``patient`` section: which attribute rules (of ``attributes``) an ADT applies,
    and what each event does. Rules are not repeated here: a site edits a rule once."""

    #: Patient-level keywords (default: every top-level rule reading PID/PD1 but not PV1,
    #: except the identity PatientID / IssuerOfPatientID).
    attributes: tuple[str, ...] = ()
    #: Visit keywords (default: every top-level rule reading PV1/PV2).
    visit: tuple[str, ...] = ()
    #: ADT trigger event (e.g. ``A08``) → one of :data:`PATIENT_ACTIONS`; an event not
    #: listed is ignored (counted).
    events: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StatusTemplate:
    """The ``status_messages`` section: the HL7 message sent to the RIS when a modality
    reports a procedure started, completed or discontinued (``outbound.host`` set)."""

    version: str = "2.3.1"
    #: MSH-9; default ORM^O01 for v2.3.x/2.4, OMG^O19 from v2.5.
    message_type: str = "ORM^O01"
    sending_application: str = "MWL_BRIDGE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    #: Segments after MSH, filled from the order and its first item.
    segments: tuple[str, ...] = ()
    #: Segments repeated for each item (SPS) of the order.
    per_item: tuple[str, ...] = ()


@dataclass
class Mapping:
    path: str
    vars: dict[str, str] = field(default_factory=dict)
    tables: dict[str, dict[str, str]] = field(default_factory=dict)
    lifecycle: dict[str, str] = field(default_factory=dict)  # "NW/SC" → "create:SCHEDULED"
    rules: list[Rule] = field(default_factory=list)
    sps_rules: list[Rule] = field(default_factory=list)
    #: Type 1C groups: at least one attribute of each group must be filled (HL7 101).
    one_of: list[tuple[str, ...]] = field(default_factory=list)
    #: Rule for the item's logical worklist label (``scp.per_called_ae_worklists``: the
    #: called AE title that serves the item), run after every attribute rule; None = none.
    worklist: Rule | None = None
    #: ``global``: an order is its placer number with namespace (filler as alias),
    #: whichever interface a message came through; ``sender``: order numbers are only
    #: unique per MSH-3/MSH-4 (several RIS share placer numbers).
    order_scope: str = "global"
    #: ADT handling (``patient`` section).
    patient: PatientRules = field(default_factory=PatientRules)
    #: Procedure status back to the RIS (``status_messages`` section); None = none.
    status_messages: StatusTemplate | None = None
    #: Which files this mapping was built from, base first.
    chain: list[str] = field(default_factory=list)
