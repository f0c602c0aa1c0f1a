"""Redis Lua scripts, kept as ``.lua`` files beside the code that runs them.

A stage keeps its scripts in its own ``lua/`` folder (``bridge/store/lua/``,
``bridge/worker/lua/``), shipped as package data. Each file opens with a comment giving
its KEYS and ARGV and what it guarantees. A script that needs a function of another
file says so in a line ``--! include <stage>/<name>`` (e.g. ``--! include
store/apply_batch``); :func:`source` puts each included file before the script, once.
Scripts are composed from whole files, never from strings cut and pasted in Python.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

import redis
from redis.commands.core import Script

_INCLUDE = re.compile(r"^--! include (\w+)/(\w+)\s*$", re.MULTILINE)


@functools.cache
def _read(stage: str, name: str) -> str:
    return (resources.files(f"bridge.{stage}") / "lua" / f"{name}.lua").read_text("utf-8")


def source(stage: str, name: str) -> str:
    """The text Redis runs for ``<stage>/lua/<name>.lua``: its includes (depth first,
    each once), then the script itself."""
    seen: list[tuple[str, str]] = []

    def visit(key: tuple[str, str]) -> None:
        if key in seen:
            return
        for inc in _INCLUDE.findall(_read(*key)):
            visit((inc[0], inc[1]))
        seen.append(key)

    visit((stage, name))
    return "\n".join(_read(*key) for key in seen)


def register(client: redis.Redis, stage: str, name: str) -> Script:
    """The script registered on ``client`` (EVALSHA, loaded again after a Redis restart)."""
    return client.register_script(source(stage, name))
