"""Logging set-up (called only by the CLI): one line per event, key=value or JSON.

Modules log events as ``log.info("ack.sent", extra={"fields": {...}})``: the message is
a stable event name and ``fields`` carries metadata (control ids, sizes, codes,
latencies). Patient data never goes into ``fields`` at INFO or above; code that wants
to show content at DEBUG calls :func:`phi` so it appears only when ``obs.log_phi`` is on.

Exceptions are a PHI channel too: errors raised inside pydicom, hl7apy, json or a codec
often quote the value they choke on (``invalid literal for int(): 'DOE^JANE'``). A failure
is logged with :func:`log_failure` (or ``extra=exc_fields(exc)``): type name and frames,
never the message, which goes to a DEBUG record only when PHI logging is on. The
formatter withholds the message of any ``exc_info`` record too (``log.exception`` in a
library: asyncio, pynetdicom, rq), unless PHI logging is on.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from types import TracebackType
from typing import Any

_PHI_ENABLED = False


def phi(value: object) -> str:
    """``value`` when PHI logging is enabled (DEBUG only), else a redaction marker."""
    return str(value) if _PHI_ENABLED else "<phi>"


def fields(**kv: Any) -> dict[str, Any]:
    """``extra=`` payload for a log call: ``log.info("x", extra=fields(a=1))``."""
    return {"fields": kv}


def exc_fields(exc: BaseException, **kv: Any) -> dict[str, Any]:
    """``extra=`` payload for a failure at INFO or above: ``error`` = the exception's type
    name and ``traceback`` = its frames (file, line, function, source line) without the
    exception message, which may quote patient data."""
    frames = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
    return fields(**kv, error=type(exc).__name__, traceback=frames)


def log_failure(
    logger: logging.Logger,
    event: str,
    exc: BaseException,
    *,
    level: int = logging.ERROR,
    **kv: Any,
) -> None:
    """Log ``exc`` at ``level`` without its message (:func:`exc_fields`); when PHI logging
    is on (DEBUG + ``obs.log_phi``) also ``<event>.detail`` at DEBUG with the full text."""
    logger.log(level, event, extra=exc_fields(exc, **kv))
    if _PHI_ENABLED:
        logger.debug(f"{event}.detail", exc_info=exc, extra=fields(**kv))


_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        kv: dict[str, Any] = getattr(record, "fields", {}) or {}
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ts += f".{int(record.msecs):03d}Z"
        if self.as_json:
            doc = {
                "ts": ts,
                "level": record.levelname,
                "logger": record.name,
                "event": record.getMessage(),
                **kv,
            }
            if record.exc_info:
                doc["exc"] = self.formatException(record.exc_info)
            return json.dumps(doc, default=str, ensure_ascii=False)
        parts = [ts, record.levelname, record.name, record.getMessage()]
        parts += [f"{k}={_quote(v)}" for k, v in kv.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    def formatException(self, ei: _ExcInfo) -> str:
        if _PHI_ENABLED:
            return super().formatException(ei)
        exc_type, _exc, tb = ei
        name = exc_type.__name__ if exc_type is not None else "Exception"
        frames = "".join(traceback.format_tb(tb))
        return (
            f"Traceback (most recent call last):\n{frames}{name}: "
            "<message withheld: may contain patient data>"
        )


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if (" " in text or not text) else text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time, not at set-up time, so a
    process that swaps stderr (a test harness, a daemon redirect) never hits a closed
    stream from a background thread."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(level: str = "INFO", fmt: str = "text", log_phi: bool = False) -> None:
    """Install the one handler on the root logger. PHI is only ever shown at DEBUG."""
    global _PHI_ENABLED
    _PHI_ENABLED = log_phi and level == "DEBUG"
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(as_json=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom's association chatter names peers and, at INFO, whole C-FIND
    # identifiers; the SCP also switches its identifier logging off
    # (bridge.scp.pynetdicom_compat.hide_identifiers).
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("hl7apy").setLevel(logging.WARNING)
