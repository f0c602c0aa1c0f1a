"""The Node.js clients in tests/js (dcmjs-dimse): an SCU we did not write."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

JS_DIR = Path(__file__).parent / "js"
NODE = shutil.which("node")


def js_script(name: str) -> Path:
    """``tests/js/<name>`` with its node_modules installed (``npm ci`` from the lock file
    when they are missing)."""
    if not (JS_DIR / "node_modules" / "dcmjs-dimse").is_dir():
        npm = shutil.which("npm")
        assert npm, "node is installed but npm is not"
        subprocess.run(
            [npm, "ci", "--silent", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=300
        )
    return JS_DIR / name
