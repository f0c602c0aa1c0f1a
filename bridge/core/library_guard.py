"""The version guard of the library adapters (``hl7/hl7apy_compat.py``,
``worker/rq_compat.py``, ``scp/pynetdicom_compat.py``).

Each adapter holds every use of one library's internals (private names, overridden
non-public methods, key layouts) that the bridge makes for speed. At import it asks
:func:`fast_path_allowed` whether the installed version is one the adapter was verified
against; on any other version it takes the library's stock public-API path instead, and
this module logs one WARNING saying so. An upgrade of rq, pynetdicom or hl7apy can thus
make the bridge slower, never break it.

``MWL_BRIDGE_STOCK_LIBRARIES=1`` forces the stock path of every adapter (to tell after
an upgrade whether a fault is in a fast path).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os

from bridge.core.logs import fields

log = logging.getLogger(__name__)

STOCK_ENV = "MWL_BRIDGE_STOCK_LIBRARIES"


def installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def stock_forced() -> bool:
    return os.environ.get(STOCK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def fast_path_allowed(distribution: str, verified: tuple[str, ...]) -> bool:
    """True when ``distribution`` is installed at a ``verified`` version and the stock
    path is not forced; otherwise False, with one WARNING for an unverified version."""
    installed = installed_version(distribution)
    if stock_forced():
        log.info("library.stock_forced", extra=fields(library=distribution, installed=installed))
        return False
    if installed in verified:
        return True
    log.warning(
        "library.unverified_version",
        extra=fields(
            library=distribution,
            installed=installed or "unknown",
            verified=",".join(verified),
            path="stock public API (slower)",
        ),
    )
    return False
