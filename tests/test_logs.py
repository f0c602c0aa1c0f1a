"""Structured logs chosen by flag; pynetdicom must not log C-FIND identifiers."""

from __future__ import annotations

import json
import logging

import pytest
import redis
from pydicom.dataset import Dataset

from bridge.core import logs
from bridge.core.logs import configure, exc_fields, fields, log_failure
from bridge.core.settings import Settings
from bridge.ops.cli import main
from bridge.scp.handlers import handle_find
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore


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


def test_pynetdicom_identifier_logging_is_off_once_the_scp_is_built() -> None:
    from pynetdicom import _config

    from bridge.core.settings import Settings
    from bridge.scp.server import build_ae

    _config.LOG_REQUEST_IDENTIFIERS = True
    _config.LOG_RESPONSE_IDENTIFIERS = True
    configure("INFO", "text")
    build_ae(Settings())
    assert _config.LOG_REQUEST_IDENTIFIERS is False
    assert _config.LOG_RESPONSE_IDENTIFIERS is False
    # Even its association chatter stays out of INFO (it names calling AEs and peers).
    assert logging.getLogger("pynetdicom").getEffectiveLevel() >= logging.WARNING
    configure("DEBUG", "text")
    assert _config.LOG_REQUEST_IDENTIFIERS is False


# -- exceptions are a PHI channel ----------------------------------------------------------

FAKE_NAME = "DOE^JANE"


def _parse_patient_name(value: str) -> int:
    # int() quotes the value it chokes on, as pydicom/hl7apy/json errors do.
    return int(value)


def _failure() -> ValueError:
    try:
        _parse_patient_name(FAKE_NAME)
    except ValueError as exc:
        return exc
    raise AssertionError("no exception")


@pytest.fixture
def no_phi(monkeypatch: pytest.MonkeyPatch) -> None:
    # configure() sets the module flag; monkeypatch puts it back after the test.
    monkeypatch.setattr(logs, "_PHI_ENABLED", False)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_failure_logged_at_error_shows_type_and_frames_not_the_message(
    fmt: str, no_phi: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("INFO", fmt)
    exc = _failure()
    assert FAKE_NAME in str(exc)  # the test can fail
    log_failure(logging.getLogger("bridge.test"), "x.failed", exc, message_id="m1")
    logging.getLogger("bridge.test").warning("x.warned", extra=exc_fields(exc))
    err = capsys.readouterr().err
    assert FAKE_NAME not in err
    assert err.count("ValueError") == 2  # the type, once per record
    assert "_parse_patient_name" in err and "m1" in err  # the frames and the fields
    if fmt == "json":
        doc = json.loads(err.splitlines()[0])
        assert doc["level"] == "ERROR" and doc["error"] == "ValueError"
        assert "_parse_patient_name" in doc["traceback"]


def test_exc_info_from_any_logger_withholds_the_message(
    no_phi: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """log.exception in a library (asyncio, pynetdicom, rq) goes through our formatter."""
    configure("INFO", "text")
    try:
        _parse_patient_name(FAKE_NAME)
    except ValueError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    err = capsys.readouterr().err
    assert FAKE_NAME not in err
    assert "_parse_patient_name" in err and "ValueError: <message withheld" in err


def test_full_exception_text_only_at_debug_with_phi_logging(
    no_phi: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("DEBUG", "text", log_phi=True)
    log_failure(logging.getLogger("bridge.test"), "x.failed", _failure())
    lines = capsys.readouterr().err.splitlines()
    error = [ln for ln in lines if " ERROR " in ln]
    assert error and FAKE_NAME not in error[0]
    assert any(" DEBUG bridge.test x.failed.detail" in ln for ln in lines)
    assert any(FAKE_NAME in ln for ln in lines)
    configure("DEBUG", "text", log_phi=False)  # DEBUG alone is not enough
    log_failure(logging.getLogger("bridge.test"), "x.failed", _failure())
    assert FAKE_NAME not in capsys.readouterr().err


class _BrokenEvent:
    """A C-FIND event whose first access fails with a library-style error that quotes a
    value: drives the handler's catch-all (C1FF) branch."""

    class assoc:  # pynetdicom's attribute names
        class requestor:
            ae_title = "MODALITY1"

    @property
    def is_cancelled(self) -> bool:
        _parse_patient_name(FAKE_NAME)
        return False


def test_cfind_internal_error_log_has_no_patient_data(
    no_phi: None, settings: Settings, redis_client: redis.Redis, capsys
) -> None:
    configure("INFO", "text")
    store = WorklistStore(redis_client, Keys(settings.redis.key_prefix))
    [(status, _)] = list(handle_find(_BrokenEvent(), store, settings.scp))
    assert isinstance(status, Dataset) and status.Status == 0xC1FF
    err = capsys.readouterr().err
    assert "cfind.internal_error" in err and "error=ValueError" in err
    assert "_parse_patient_name" in err and FAKE_NAME not in err
