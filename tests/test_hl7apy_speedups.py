"""bridge.hl7.hl7apy_compat changes how fast hl7apy parses, never what it returns."""

from __future__ import annotations

from typing import Any

import pytest
from orm_builder import orm

from bridge.core.settings import Settings
from bridge.hl7 import hl7apy_compat as hl7apy_speedups
from bridge.hl7.parse import _hl7apy_parse, normalise
from bridge.worker import rq_worker as workers

MESSAGES = [
    orm(),
    orm(version="2.3", obrs=[{4: "CTHEAD^CT Head^L"}, {4: "CTCHEST^CT Chest^L"}]),
    orm(version="2.4", patient_id="1^^^A~2^^^B", nte=["a \\F\\ b \\S\\ c", "x\\.br\\y"]),
    orm(version="2.5", control="XO", zds="1.2.3^^Application^DICOM"),
    orm(version="2.5.1", charset="UNICODE UTF-8", patient_name="MÜLLER^JÖRG"),
    orm(version="2.5.1", pv1={}, zds=None, nte=[]),
]


def tree(element: Any) -> Any:
    """Every element's class, name, datatype and value, depth first."""
    head = (type(element).__name__, element.name, element.__dict__.get("_datatype"))
    children = element.__dict__.get("children")
    if children is None or not len(children):
        return (*head, element.to_er7())
    return (*head, [tree(c) for c in children])


def parsed(text: str) -> tuple[str, Any]:
    msg = _hl7apy_parse(normalise(text))
    return msg.to_er7(), tree(msg)  # type: ignore[attr-defined]


@pytest.fixture
def stock_then_restored() -> Any:
    was = hl7apy_speedups.installed()
    hl7apy_speedups.uninstall()
    yield
    if was:
        hl7apy_speedups.install()


@pytest.mark.parametrize("text", MESSAGES, ids=range(len(MESSAGES)))
def test_parse_is_identical_with_and_without(text: str, stock_then_restored: None) -> None:
    assert not hl7apy_speedups.installed()
    stock = parsed(text)
    hl7apy_speedups.install()
    assert hl7apy_speedups.installed()
    assert parsed(text) == stock
    hl7apy_speedups.uninstall()
    assert parsed(text) == stock


def test_unsupported_version_still_raises(stock_then_restored: None) -> None:
    from hl7apy import load_library
    from hl7apy.exceptions import UnsupportedVersion

    hl7apy_speedups.install()
    import hl7apy

    for _ in range(2):  # the failure is not memoised as an answer
        with pytest.raises(UnsupportedVersion):
            hl7apy.load_library("9.9")
    assert load_library is not hl7apy.load_library


def test_the_worker_installs_them(settings: Settings, redis_client: Any) -> None:
    workers.install(settings, redis_client)
    assert hl7apy_speedups.installed()
