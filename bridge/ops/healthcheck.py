"""``python -m bridge.ops.healthcheck``: exit 0 when this container's ``/healthz`` answers.

The Docker HEALTHCHECK. It reads the port the way the service does
(``MWL_BRIDGE_OBS_METRICS_PORT``) and asks 127.0.0.1, so it needs no curl in the image.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

DEFAULT_PORT = 9100


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    path = args[0] if args else "/healthz"
    port = int(os.environ.get("MWL_BRIDGE_OBS_METRICS_PORT") or DEFAULT_PORT)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as resp:
            ok = resp.status == 200
    except (urllib.error.URLError, OSError):
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
