"""One exception tree, split by what happens next.

* :class:`TransientError` — the world is briefly broken (Redis unreachable, lock busy):
  retry later; the listener answers AR/CR with ERR 207, the SCP answers A700.
* :class:`PermanentError` — this input will never work (cannot parse, required field
  missing, unknown code): dead-letter the raw message with the HL7 error code; the
  sender gets AE (application mode) with ERR naming the field.
* :class:`ConfigError` — the operator's configuration is invalid: exit code 2, nothing starts.

Library exceptions (redis, hl7apy, pydicom) are wrapped into these at the module that
calls the library, so callers never catch a library type.
"""

from __future__ import annotations

from bridge.core.codes import Hl7Error


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """Invalid configuration; ``key`` names the setting (e.g. ``mllp.port``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"invalid setting {key}: {message}")
        self.key = key


class TransientError(BridgeError):
    """A failure that a retry may cure (Redis down, timeout, lock contention)."""


class StoreUnavailable(TransientError):
    """Redis could not be reached or a write failed."""


class PermanentError(BridgeError):
    """A failure of this input that no retry cures.

    ``code`` is the HL7 table 0357 code for the ERR segment, ``location`` the HL7 field
    (e.g. ``PID-3``) when one is to blame, ``detail`` more for the dead letter than fits
    an ACK (e.g. the values a table allows; never patient data).
    """

    def __init__(
        self,
        message: str,
        code: Hl7Error = Hl7Error.INTERNAL_ERROR,
        location: str = "",
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.location = location
        self.detail = detail


class MessageRejected(PermanentError):
    """The message cannot be parsed, decoded or mapped (→ dead-letter, AE)."""


class MappingFileError(ConfigError):
    """A mapping file is invalid; the message names file, line and key."""

    def __init__(self, path: str, message: str, line: int | None = None, key: str = "") -> None:
        where = f"{path}:{line}" if line is not None else path
        detail = f"{where}: {key + ': ' if key else ''}{message}"
        super().__init__("mapping", detail)
        self.path = path
        self.line = line
        self.mapping_key = key
