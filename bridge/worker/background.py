"""Apply in the background: a worker parses its next batch while the last one is written.

Why: with ``appendfsync always`` each write round trip waits for Redis's fsync, which
took 3–10 ms on a shared VM disk with two workers. Storing a batch's outcomes and
writing its run (two scripts, see :mod:`bridge.worker.sequencer`) left a worker idle for
about a tenth of its time. In the ``worker`` verb a job therefore hands the outcomes of
its batch to this thread and returns; rq gives the worker its next job, and the thread
waits for Redis while the worker parses.

What changes for a failure: the job has finished before its outcomes are stored, so
rq no longer retries it. The thread does instead: a Redis error is retried with
backoff (0.5 s doubling to 30 s) for as long as the worker runs, and the worker takes
no new job meanwhile (:meth:`submit` blocks behind the waiting batch). If the process
dies first, nothing is lost either: the messages are still in the ingest list and the
batch record names them, so the stuck-head recovery of any worker parses them again
(:meth:`bridge.sequencer.Sequencer.recover`) within ``stuck_head_s +
maintenance_interval_s``. At most one batch waits for the thread, which bounds both
memory and that re-work.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable

import redis

from bridge.core.errors import TransientError
from bridge.core.logs import fields, log_failure

log = logging.getLogger(__name__)

#: drain(outcomes, batch key) as :meth:`bridge.sequencer.Sequencer.drain`.
DrainFn = Callable[[list[tuple[str, str]], str], int]

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0


class BackgroundApplier:
    def __init__(self, drain: DrainFn) -> None:
        self._drain = drain
        self._queue: queue.Queue[tuple[list[tuple[str, str]], str] | None] = queue.Queue(1)
        self._stop_retrying = threading.Event()
        self._left_to_recovery = False
        self._thread = threading.Thread(target=self._run, name="mwl-apply", daemon=True)
        self._thread.start()

    def submit(self, outcomes: list[tuple[str, str]], batch_key: str) -> None:
        """Queue a batch's outcomes; blocks while an earlier batch still waits."""
        self._queue.put((outcomes, batch_key))

    def close(self, timeout_s: float = 60.0) -> bool:
        """Apply what was submitted (retrying until ``timeout_s``), then stop; False if
        something was left to the stuck-head recovery."""
        deadline = time.monotonic() + timeout_s
        # Full until the deadline: the thread still retries a batch; it is stopped below.
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._stop_retrying.set()
            self._thread.join(5.0)
        return not self._thread.is_alive() and not self._left_to_recovery

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._apply(*item)

    def _apply(self, outcomes: list[tuple[str, str]], batch_key: str) -> None:
        first = outcomes[0][0] if outcomes else ""
        delay = RETRY_FIRST_S
        while True:
            try:
                self._drain(outcomes, batch_key)
                return
            except (redis.RedisError, TransientError) as exc:
                if self._stop_retrying.is_set():
                    # The batch record and the ingest list still hold these messages:
                    # the stuck-head recovery parses them again.
                    self._left_to_recovery = True
                    log_failure(log, "apply.background_gave_up", exc, messages=len(outcomes),
                                first=first)  # fmt: skip
                    return
                log.warning(
                    "apply.background_retry",
                    extra=fields(messages=len(outcomes), first=first, delay_s=delay,
                                 error=type(exc).__name__),
                )  # fmt: skip
                self._stop_retrying.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            except Exception as exc:
                # A bug, not Redis: retrying would repeat it. The recovery parses the
                # batch again; a message that fails every time ends as a dead letter.
                self._left_to_recovery = True
                log_failure(log, "apply.background_failed", exc, messages=len(outcomes),
                            first=first)  # fmt: skip
                return
