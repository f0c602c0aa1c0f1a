"""bridge.scp.pynetdicom_compat puts the same PDUs on the wire as pynetdicom's own send_msg."""

from __future__ import annotations

from typing import Any

import pytest
from mwl_items import make_item
from pynetdicom import evt
from scp_support import StartScp, find, mwl_query

from bridge.scp import pynetdicom_compat as find_sender
from bridge.store.worklist_store import WorklistStore


def _wire(start_scp: StartScp, max_pdu: int) -> tuple[list[bytes], Any]:
    """Every P-DATA-TF the SCP sends for one query (the association's PDUs)."""
    scp = start_scp()
    sent: list[bytes] = []

    def pdu_sent(event: Any) -> None:
        if event.data[:1] == b"\x04":  # P-DATA-TF
            sent.append(bytes(event.data))

    scp._server.bind(evt.EVT_DATA_SENT, pdu_sent)
    result = find(scp.port, mwl_query(Modality="CT"), max_pdu=max_pdu)
    return sent, result


@pytest.mark.parametrize("max_pdu", [16382, 64, 0])
def test_pdus_are_identical_to_pynetdicoms(
    store: WorklistStore, start_scp: StartScp, monkeypatch: pytest.MonkeyPatch, max_pdu: int
) -> None:
    store.apply([make_item(n) for n in range(1, 6)])
    ours, result = _wire(start_scp, max_pdu)
    assert result.statuses == [0xFF00] * 5 + [0x0000]
    monkeypatch.setattr(find_sender, "install", lambda assoc: None)
    theirs, _ = _wire(start_scp, max_pdu)
    # A command and an identifier per match, then the final response; fragmented
    # (more PDUs) when the peer accepts only 64-byte PDUs.
    assert len(ours) == len(theirs) >= 11
    assert ours == theirs


def test_pynetdicom_builds_the_messages_when_it_logs_them(
    store: WorklistStore, start_scp: StartScp, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    store.apply([make_item(1)])
    with caplog.at_level(logging.DEBUG, logger="pynetdicom"):
        _wire(start_scp, 16382)
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("pynetdicom")]
    assert sum("C-FIND RSP" in m for m in logged) >= 2  # the pending one is logged too
