"""Every use of hl7apy's internals, in one place, behind a version guard: two lookups
inside hl7apy made cheap; what a parse returns does not change.

Verified against hl7apy **1.3.5** (:data:`VERIFIED_VERSIONS`). On any other version (or
with ``MWL_BRIDGE_STOCK_LIBRARIES=1``) :data:`FAST` is False, one WARNING is logged at
import (:mod:`bridge.core.library_guard`) and :func:`install` does nothing: the worker
parses with hl7apy as shipped, ~20 % slower.

Measured on the benchmark's ORM^O01 (``bench/results/workers.md``): 6.8 → 5.4 ms of CPU
per message (−20 %), both together:

* ``hl7apy.load_library(version)`` runs ``importlib.import_module`` about 1,600 times per
  message (each element it creates asks for its version's model module). The answer
  never changes within a process, so it is memoised per version.
* ``Element.__setattr__`` tests ``name in self.cls_attrs``, a *list*, for every
  attribute it sets (thousands per message). hl7apy only ever tests membership in
  ``cls_attrs``, so the lists become frozensets.

The worker installs this once per process (:func:`bridge.worker.rq_worker.install`); the
benchmark calls :func:`uninstall` to measure stock hl7apy beside it.
``tests/test_hl7apy_speedups.py`` checks that parsed trees are identical either way.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import hl7apy
import hl7apy.core
import hl7apy.factories

from bridge.core.library_guard import fast_path_allowed

VERIFIED_VERSIONS = ("1.3.5",)
#: Whether :func:`install` patches hl7apy (decided once at import; tests flip it).
FAST = fast_path_allowed("hl7apy", VERIFIED_VERSIONS)

#: Modules that imported ``load_library`` by name (they hold their own reference).
_LIBRARY_USERS = (hl7apy, hl7apy.core, hl7apy.factories)

_original_load_library = hl7apy.load_library
_original_cls_attrs: dict[type, Any] = {}


def installed() -> bool:
    return hl7apy.load_library is not _original_load_library


def install() -> None:
    """Idempotent; a no-op on the stock path (:data:`FAST` False)."""
    if installed() or not FAST:
        return
    cached = functools.lru_cache(maxsize=None)(_original_load_library)
    for module in _LIBRARY_USERS:
        module.load_library = cached  # type: ignore[attr-defined]
    for _, cls in inspect.getmembers(hl7apy.core, inspect.isclass):
        attrs = cls.__dict__.get("cls_attrs")
        if isinstance(attrs, list | tuple):
            _original_cls_attrs[cls] = attrs
            cls.cls_attrs = frozenset(attrs)


def uninstall() -> None:
    """Back to hl7apy as shipped (for the benchmark's side-by-side baseline)."""
    for module in _LIBRARY_USERS:
        module.load_library = _original_load_library  # type: ignore[attr-defined]
    for cls, attrs in _original_cls_attrs.items():
        cls.cls_attrs = attrs
    _original_cls_attrs.clear()
