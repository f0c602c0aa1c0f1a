"""The multi-language sample orders of tests/samples/orm_charset_*.hl7 and what each
must come out as: one per character set family the bridge takes (issue #11).

Each sample is built with tests/orm_builder.py and encoded with Python's own codecs
(not the bridge's), so the bridge's decoder is checked against an independent encoder.
The files are committed byte for byte (``tests/samples/.gitattributes``: ``-text``);
``python tests/charset_samples.py`` rewrites them, and tests/test_charsets.py checks they
still equal what this module builds.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from orm_builder import orm

SAMPLES = Path(__file__).parent / "samples"


@dataclass(frozen=True)
class CharsetSample:
    file: str
    clause: str  # what the sample exercises
    msh18: str
    msh20: str
    codec: str  # Python codec the whole message is encoded with
    pid5: str  # PID-5 as sent (XPN repetitions)
    patient_name: str  # the DICOM PN the worklist must hold, as Unicode
    patient_id: str

    def text(self) -> str:
        return orm(
            control_id=f"CS-{self.patient_id}",
            placer=f"PL-{self.patient_id}",
            filler=f"FL-{self.patient_id}",
            patient_id=f"{self.patient_id}^^^HOSP",
            patient_name=self.pid5,
            charset=self.msh18,
            scheme=self.msh20,
            version="2.5",
            zds=None,
            sep="\n",  # stored with LF like the other samples; the tests send CR
        )

    def build(self) -> bytes:
        return self.text().encode(self.codec)

    @property
    def path(self) -> Path:
        return SAMPLES / self.file

    def message(self) -> bytes:
        """The committed sample with CR segment separators, as a sender sends it."""
        return self.path.read_bytes().replace(b"\n", b"\r")


SAMPLES_BY_LANGUAGE: dict[str, CharsetSample] = {
    "japanese": CharsetSample(
        "orm_charset_ja_iso2022_jahis.hl7",
        "JAHIS: MSH-18 ~ISO IR87 (ASCII default, JIS X 0208 by ESC $ B), MSH-20 "
        "ISO 2022-1994 (HL7 v2.5 2.16.9.18/2.16.9.20, tables 0211/0356); PID-5 "
        "repetitions keyed by XPN-8 A/I/P (table 4000) → PN groups",
        "~ISO IR87",
        "ISO 2022-1994",
        "iso2022_jp",
        "Yamada^Tarou^^^^^L^A~山田^太郎^^^^^L^I~やまだ^たろう^^^^^L^P",
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "JA1",
    ),
    "korean": CharsetSample(
        "orm_charset_ko_ks_x_1001.hl7",
        "MSH-18 KS X 1001 alone: the whole message in EUC-KR (KS X 1001 in G1 over ASCII)",
        "KS X 1001",
        "",
        "euc_kr",
        "홍^길동",
        "홍^길동",
        "KO1",
    ),
    "chinese": CharsetSample(
        "orm_charset_zh_gb18030.hl7",
        "MSH-18 GB 18030-2000: the whole message in GB 18030",
        "GB 18030-2000",
        "",
        "gb18030",
        "王^小明",
        "王^小明",
        "ZH1",
    ),
    "greek": CharsetSample(
        "orm_charset_el_8859_7.hl7",
        "MSH-18 8859/7 (Greek)",
        "8859/7",
        "",
        "iso8859_7",
        "ΔΗΜΗΤΡΙΟΥ^ΕΛΕΝΗ",
        "ΔΗΜΗΤΡΙΟΥ^ΕΛΕΝΗ",
        "EL1",
    ),
    "cyrillic": CharsetSample(
        "orm_charset_ru_8859_5.hl7",
        "MSH-18 8859/5 (Cyrillic)",
        "8859/5",
        "",
        "iso8859_5",
        "ИВАНОВ^ПЁТР",
        "ИВАНОВ^ПЁТР",
        "RU1",
    ),
    "latin1": CharsetSample(
        "orm_charset_de_8859_1.hl7",
        "MSH-18 8859/1 (Latin-1)",
        "8859/1",
        "",
        "latin_1",
        "MÜLLER^JÜRGEN",
        "MÜLLER^JÜRGEN",
        "DE1",
    ),
}


def write_all() -> None:
    for sample in SAMPLES_BY_LANGUAGE.values():
        sample.path.write_bytes(sample.build())


if __name__ == "__main__":
    write_all()
