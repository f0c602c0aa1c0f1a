"""Parse in parallel, apply in ACK order: the reorder buffer on ``keys.ingest_order``.

Why: messages of one order (NW, XO, CA) may be parsed by different workers at the same
time, and hl7apy is slow enough (~10 ms) that a later message often finishes first. The
listener RPUSHes every accepted message id to ``ingest_order`` in ACK order; that list
is the one sequence of truth.

How (details and the failure analysis in ``docs/workers.md``), one module per part:

1. :mod:`~bridge.worker.claim` — :meth:`Sequencer.process` takes the jobs queued behind
   its own (a batch, up to ``worker.batch_size``), parses and maps the messages (the
   expensive, parallel part) and stores the outcomes as JSON in ``parsed:<id>`` (``SET
   NX``: a re-run never replaces one). A permanent failure stores a ``rejected``
   outcome, so the line still advances.
2. :mod:`~bridge.worker.apply` — :meth:`Sequencer.drain` takes ``apply_lock`` (``SET NX
   PX`` with a random token) if the *head* of ``ingest_order`` has a parsed outcome
   (else the head's own job, or the recovery, applies the line later) and, while the
   head has one, plans the run of parsed messages at the head against the order states,
   then — fenced by the lock token, in one script — writes all their items and order
   states, pops them and deletes their ``parsed:<id>`` (all or nothing). It releases the
   lock only if it still holds the token, then re-checks the head: a worker that stored
   its outcome while we held the lock found the lock busy and left, so the holder must
   look again (no lost wake-up).
3. :mod:`~bridge.worker.recovery` — a worker that dies mid-parse leaves the head
   unparsed. rq would re-run its job only after the job heartbeat expires (~90 s) plus a
   maintenance pass; instead every worker's maintenance step (:meth:`Sequencer.recover`,
   every ``worker.maintenance_interval_s``) notes since when the head waits and parses
   it itself after ``worker.stuck_head_s``.

The scripts are ``bridge/worker/lua/*.lua``, each with its KEYS, ARGV and guarantees.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from bridge.core.settings import WorkerSettings
from bridge.store import lua
from bridge.store.keys import Keys
from bridge.store.worklist_store import WorklistStore
from bridge.worker.apply import APPLY_RUN, RESULT_TTL_S, LockLost, RunApply
from bridge.worker.background import BackgroundApplier
from bridge.worker.claim import BATCH_TTL_S, BatchParse, ParseFn, failure_label
from bridge.worker.lifecycle import Planner
from bridge.worker.recovery import HeadRecovery
from bridge.worker.rq_compat import batch_keys

__all__ = [
    "APPLY_RUN",
    "BATCH_TTL_S",
    "RESULT_TTL_S",
    "LockLost",
    "ParseFn",
    "Sequencer",
    "failure_label",
]


class Sequencer(BatchParse, RunApply, HeadRecovery):
    """One worker process's view of the line: parse (claim), apply, recover."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        store: WorklistStore,
        settings: WorkerSettings,
        parse: ParseFn,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.r = client
        self.clock = clock
        self.keys = keys
        self.store = store
        self.settings = settings
        self.parse_fn = parse
        self.planner = Planner(client, keys, store, settings)
        self.outbound = None  # install() sets it when status messages go to a RIS
        self._acquire = lua.register(client, "worker", "acquire")
        self._release_peek = lua.register(client, "worker", "release_peek")
        self._finalize = lua.register(client, "worker", "finalize")
        self._drop_missing = lua.register(client, "worker", "drop_missing_head")
        self._claim_script = lua.register(client, "worker", "claim")
        #: rq's key layout for the batch claim; None on rq's stock path (no batches).
        self.rq_keys = batch_keys(keys.queue_name())
        self.applier: BackgroundApplier | None = None
        self._drain_lock = threading.Lock()
