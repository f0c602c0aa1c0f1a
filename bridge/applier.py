"""Apply in the background: a worker parses its next batch while the last one is written.

Why: with ``appendfsync always`` each write round trip waits for Redis's fsync, which
took 3–10 ms on a shared VM disk with two workers. Storing a batch's outcomes and
writing its run (two scripts, see :mod:`bridge.sequencer`) left a worker idle for
about a tenth of its time. In the ``worker`` verb a job therefore hands the outcomes of
its batch to this thread and returns; rq gives the worker its next job, and the thread
waits for Redis while the worker parses.

What changes for a failure: the job has finished before its outcomes are stored. If the
process dies (or Redis fails) in between, nothing is lost: the messages are still in
the ingest list and the batch record still names them, so the stuck-head recovery of
any worker parses them again (:meth:`bridge.sequencer.Sequencer.recover`), within
``stuck_head_s + maintenance_interval_s``. At most one batch waits for the thread
(:meth:`submit` blocks behind it), which bounds both memory and that re-work.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from bridge.logs import fields, log_failure

log = logging.getLogger(__name__)

#: drain(outcomes, batch key) as :meth:`bridge.sequencer.Sequencer.drain`.
DrainFn = Callable[[list[tuple[str, str]], str], int]


class BackgroundApplier:
    def __init__(self, drain: DrainFn) -> None:
        self._drain = drain
        self._queue: queue.Queue[tuple[list[tuple[str, str]], str] | None] = queue.Queue(1)
        self._thread = threading.Thread(target=self._run, name="mwl-apply", daemon=True)
        self._thread.start()

    def submit(self, outcomes: list[tuple[str, str]], batch_key: str) -> None:
        """Queue a batch's outcomes; blocks while an earlier batch still waits."""
        self._queue.put((outcomes, batch_key))

    def close(self, timeout_s: float = 60.0) -> bool:
        """Apply what was submitted, then stop; False if the thread did not finish."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            outcomes, batch_key = item
            try:
                self._drain(outcomes, batch_key)
            except Exception as exc:
                # The batch record and the ingest list still hold these messages: the
                # stuck-head recovery parses them again.
                log_failure(
                    log,
                    "apply.background_failed",
                    exc,
                    messages=len(outcomes),
                    first=outcomes[0][0] if outcomes else "",
                )
            else:
                if outcomes:
                    log.debug("apply.background_done", extra=fields(messages=len(outcomes)))
