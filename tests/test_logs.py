"""Structured logs chosen by flag; pynetdicom must not log C-FIND identifiers."""

from __future__ import annotations

import json
import logging

import pytest

from bridge.cli import main
from bridge.logs import configure, fields


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_format_json_flag(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worklist", "list", "--redis-url", redis_url, "--log-format", "json"]) == 0
    capsys.readouterr()
    logging.getLogger("bridge.test").info("ack.sent", extra=fields(code="AA", control_id="C1"))
    line = capsys.readouterr().err.strip().splitlines()[-1]
    doc = json.loads(line)
    assert doc["event"] == "ack.sent" and doc["code"] == "AA" and doc["level"] == "INFO"


def test_log_format_text_is_key_value(redis_url: str, capsys) -> None:
    assert main(["worklist", "list", "--redis-url", redis_url, "--log-format", "text"]) == 0
    capsys.readouterr()
    logging.getLogger("bridge.test").warning("x.y", extra=fields(reason="too large", n=3))
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith('WARNING bridge.test x.y reason="too large" n=3')


def test_unknown_log_format_is_a_config_error(capsys) -> None:
    assert main(["status", "--log-format", "xml"]) == 2
    assert "obs.log_format" in capsys.readouterr().err


def test_pynetdicom_identifier_logging_is_off_after_configure() -> None:
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = True
    _config.LOG_RESPONSE_IDENTIFIERS = True
    configure("INFO", "text")
    assert _config.LOG_REQUEST_IDENTIFIERS is False
    assert _config.LOG_RESPONSE_IDENTIFIERS is False
    # Even its association chatter stays out of INFO (it names calling AEs and peers).
    assert logging.getLogger("pynetdicom").getEffectiveLevel() >= logging.WARNING
    configure("DEBUG", "text")
    assert _config.LOG_REQUEST_IDENTIFIERS is False
