"""The rq job path of releases before the layout by stage.

Jobs queued by those releases name ``bridge.jobs.process_message``; rq imports that
name when it runs them, so it stays importable and does what
:func:`bridge.worker.jobs.process_message` does (the lean worker treats both names
alike, ``bridge.worker.rq_compat.JOB_FUNCS``). New jobs name the new path.
"""

from bridge.worker.jobs import process_message

__all__ = ["process_message"]
