"""rq entry points: importable functions taking plain data (the message id).

rq resolves ``bridge.worker.jobs.process_message`` by name in the worker process (jobs
queued before the layout by stage name ``bridge.jobs.process_message``, which
:mod:`bridge.jobs` keeps importable); the worker installs its
:class:`~bridge.worker.rq_worker.WorkerContext` (settings, Redis client, mappings)
before it starts, and a work horse forked from it inherits that context. A process
without one (e.g. a plain ``rq worker``) builds it from ``MWL_BRIDGE_*`` environment
variables and ``$MWL_BRIDGE_CONFIG`` via ``load_settings()``.
"""

from __future__ import annotations

from bridge.worker.rq_worker import context


def process_message(message_id: str) -> str:
    """Parse and map one received message, then apply the line in ACK order.

    Permanent failures are dead-lettered inside (the job succeeds); transient ones
    (Redis down) raise so rq retries with backoff.
    """
    return context().sequencer.process(message_id)
