"""Child processes that cannot outlive their parent.

``mwl-bridge run`` starts redis-server and the role processes as children. If the
supervisor is killed with SIGKILL it gets no chance to stop them, so each child asks the
Linux kernel to send it SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``). On
other systems the children are at least in the supervisor's process group, so a
terminal's Ctrl-C or ``kill -- -PGID`` reaches all of them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # pragma: no cover - every glibc/musl system has it
        return None
    return libc.prctl


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: deliver ``sig`` to the child when
    the process that spawned it dies.

    The death signal fires when the spawning *thread* exits, so children must be started
    from the main thread (the supervisor does). The parent may already have died between
    ``fork`` and ``prctl``; the child checks and signals itself in that case.
    """
    parent = os.getpid()
    prctl = _prctl()

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec
