"""Two lookups inside hl7apy made cheap; what a parse returns does not change.

Measured on the benchmark's ORM^O01 (``bench/results/workers.md``): 6.8 → 5.4 ms of CPU
per message (−20 %), both together:

* ``hl7apy.load_library(version)`` runs ``importlib.import_module`` about 1,600 times per
  message (each element it creates asks for its version's model module). The answer
  never changes within a process, so it is memoised per version.
* ``Element.__setattr__`` tests ``name in self.cls_attrs``, a *list*, for every
  attribute it sets (thousands per message). hl7apy only ever tests membership in
  ``cls_attrs``, so the lists become frozensets.

The worker installs this once per process (:func:`bridge.workers.install`); the
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

#: Modules that imported ``load_library`` by name (they hold their own reference).
_LIBRARY_USERS = (hl7apy, hl7apy.core, hl7apy.factories)

_original_load_library = hl7apy.load_library
_original_cls_attrs: dict[type, Any] = {}


def installed() -> bool:
    return hl7apy.load_library is not _original_load_library


def install() -> None:
    """Idempotent."""
    if installed():
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
