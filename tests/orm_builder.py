"""Build ORM^O01 messages field by field (tests and the benchmark), so nobody counts pipes."""

from __future__ import annotations

import itertools

# Every message gets its own MSH-10 unless a test names one: the real intake
# de-duplicates on sender + control id, as a listener must.
_CONTROL_IDS = itertools.count(1)


def segment(name: str, fields: dict[int, str]) -> str:
    """``name`` with ``fields[n]`` at field n (1-based); gaps are empty fields."""
    top = max(fields) if fields else 0
    return "|".join([name, *(fields.get(i, "") for i in range(1, top + 1))])


def msh(
    version: str = "2.3.1",
    charset: str = "",
    control_id: str | None = None,
    sender: str = "RIS",
    facility: str = "HOSP",
    when: str = "20260705080000",
    scheme: str = "",
) -> str:
    """MSH with MSH-18 ``charset`` (repetitions joined by ``~``) and MSH-20 ``scheme``
    (HL7 table 0356: ``ISO 2022-1994`` or ``2.3``)."""
    fields = {2: sender, 3: facility, 4: "MWL", 5: "HOSP", 6: when, 8: "ORM^O01",
              9: control_id or f"CTRL{next(_CONTROL_IDS)}", 10: "P", 11: version}  # fmt: skip
    if charset:
        fields[17] = charset
    if scheme:
        fields[19] = scheme
    # MSH-1 is the separator itself, so MSH fields shift by one in the join.
    return "MSH|^~\\&|" + "|".join(fields.get(i, "") for i in range(2, max(fields) + 1))


def orm(
    control: str = "NW",
    status: str = "SC",
    placer: str = "PL1",
    filler: str = "FL1",
    version: str = "2.3.1",
    charset: str = "",
    control_id: str | None = None,
    patient_name: str = "DOE^JOHN^Q^JR^DR^PHD",
    patient_id: str = "12345^^^HOSP",
    birth: str = "19700101",
    sex: str = "M",
    obrs: list[dict[int, str]] | None = None,
    start: str = "20260705101500",
    zds: str | None = "1.2.826.0.1.3680043.2.1125.1.1",
    station: str = "CT_ROOM1",
    modality: str = "CT",
    nte: list[str] | None = None,
    pv1: dict[int, str] | None = None,
    sep: str = "\r",
    sender: str = "RIS",
    facility: str = "HOSP",
    when: str = "20260705080000",
    orc9: str = "",
    scheme: str = "",
) -> str:
    segs = [msh(version, charset, control_id, sender=sender, facility=facility, when=when,
                scheme=scheme)]
    segs.append(segment("PID", {1: "1", 3: patient_id, 5: patient_name, 7: birth, 8: sex}))
    segs.append(
        segment(
            "PV1",
            pv1
            if pv1 is not None
            else {1: "1", 2: "O", 3: "RAD^101^1", 8: "1234^WELBY^MARCUS^A^^DR", 19: "V123"},
        )
    )
    orc = {1: control, 2: placer, 3: filler, 5: status, 7: f"^^^{start}^^R"}
    if orc9:
        orc[9] = orc9
    segs.append(segment("ORC", orc))
    for n, extra in enumerate(obrs or [{}], start=1):
        fields = {
            1: str(n), 2: placer, 3: filler,
            4: f"CTCHEST{n}^CT Chest {n}^LOCAL^P{n}^Chest protocol {n}^LOCAL",
            16: "5678^HOUSE^GREGORY", 18: f"ACC{n}", 19: f"RP{n}", 20: f"SPS{n}", 21: station,
            24: modality, 27: f"^^^{start}^^R", 30: "WALK", 31: "^Chest pain",
            34: "99&TECH&TOM",
        }  # fmt: skip
        fields.update(extra)
        segs.append(segment("OBR", {k: v for k, v in fields.items() if v is not None}))
        for i, text in enumerate(nte or [], start=1):
            segs.append(segment("NTE", {1: str(i), 3: text}))
        if zds is not None:
            segs.append(
                segment("ZDS", {1: f"{zds}{'.' + str(n) if n > 1 else ''}^RIS^Application^DICOM"})
            )
    return sep.join(segs) + sep
