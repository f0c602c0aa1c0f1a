"""Character sets: HL7 table 0211 names (MSH-18) to Python codecs and to DICOM Specific
Character Set defined terms (PS3.3 C.12.1.1.2)."""

from __future__ import annotations

#: HL7 table 0211 (MSH-18) → Python codec. UTF-16/32 cannot travel over MLLP.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "8859/2": "iso8859_2",
    "8859/3": "iso8859_3",
    "8859/4": "iso8859_4",
    "8859/5": "iso8859_5",
    "8859/6": "iso8859_6",
    "8859/7": "iso8859_7",
    "8859/8": "iso8859_8",
    "8859/9": "iso8859_9",
    "8859/15": "iso8859_15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    "CNS 11643-1992": "big5",  # the closest codec Python ships
    "WINDOWS-1252": "cp1252",  # not in table 0211, but common in RIS feeds
}

#: HL7 table 0211 → DICOM Specific Character Set defined term (PS3.3 C.12.1.1.2).
DICOM_CHARSETS: dict[str, str] = {
    "ASCII": "",
    "ISO IR6": "",
    "8859/1": "ISO_IR 100",
    "ISO IR100": "ISO_IR 100",
    "8859/2": "ISO_IR 101",
    "8859/3": "ISO_IR 109",
    "8859/4": "ISO_IR 110",
    "8859/5": "ISO_IR 144",
    "8859/6": "ISO_IR 127",
    "8859/7": "ISO_IR 126",
    "8859/8": "ISO_IR 138",
    "8859/9": "ISO_IR 148",
    "8859/15": "ISO_IR 203",
    "UNICODE UTF-8": "ISO_IR 192",
    "UNICODE": "ISO_IR 192",
    "UTF-8": "ISO_IR 192",
    "ISO IR87": "ISO 2022 IR 87",
    "ISO IR159": "ISO 2022 IR 159",
    "GB 18030-2000": "GB18030",
    "KS X 1001": "ISO 2022 IR 149",
    "BIG-5": "ISO_IR 192",
    "CNS 11643-1992": "ISO_IR 192",
    "WINDOWS-1252": "ISO_IR 100",
}

#: Versions with an ORM^O01 model in hl7apy, oldest first (ORM was withdrawn after 2.5.1).
