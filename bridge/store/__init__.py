"""Redis: every key (``keys``), the one worklist item shape (``item``), the indexed
worklist store with its Lua writes (``worklist_store``, ``lua/``), Redis clients
(``connections``), the embedded redis-server (``embedded_redis``) and the Lua script
loader (``lua``).

Takes in: worklist items and queries. Hands on: stored items, candidate ids, counts.
May import: ``core``.
"""

#: The sub-packages of ``bridge`` this one may import (tests/test_layout.py checks it).
MAY_IMPORT: tuple[str, ...] = ("core",)
