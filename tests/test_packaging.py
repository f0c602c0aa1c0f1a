"""What gets installed: the suite runs against the installed wheel, the wheel carries every
sub-package and Lua script, and the Docker image's constraints file pins exact versions
that satisfy the package's open ranges and that the library adapters were verified
against."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import bridge

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
ADAPTERS = {
    "rq": "bridge.worker.rq_compat",
    "pynetdicom": "bridge.scp.pynetdicom_compat",
    "hl7apy": "bridge.hl7.hl7apy_compat",
}


def pins() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"not an exact pin: {line}"
            out[name.lower().replace("_", "-")] = version
    return out


def dependencies() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(d) for d in project["dependencies"]]


@pytest.mark.skipif(
    os.environ.get("MWL_BRIDGE_TEST_INSTALLED") != "1", reason="only where .ci/run installs"
)
def test_the_suite_imports_the_installed_package_not_the_source_tree() -> None:
    installed = Path(bridge.__file__).resolve()
    assert ROOT / "bridge" not in installed.parents, installed
    assert "site-packages" in installed.parts


def test_the_package_carries_every_stage_and_lua_script() -> None:
    source_scripts = sorted(p.relative_to(ROOT / "bridge") for p in ROOT.glob("bridge/*/lua/*.lua"))
    assert len(source_scripts) >= 7
    for rel in source_scripts:
        stage = rel.parts[0]
        packaged = resources.files(f"bridge.{stage}") / "lua" / rel.name
        assert packaged.is_file(), rel
    for stage in ("core", "hl7", "store", "intake", "mllp", "worker", "scp", "ops"):
        importlib.import_module(f"bridge.{stage}")
    assert (resources.files("bridge") / "data" / "ihe-rad.yaml").is_file()


def test_constraints_pin_every_dependency_within_the_open_ranges() -> None:
    pinned = pins()
    for req in dependencies():
        name = req.name.lower().replace("_", "-")
        assert name in pinned, f"{req.name} is not pinned in {CONSTRAINTS.name}"
        assert Version(pinned[name]) in req.specifier, (req, pinned[name])
        assert not re.search(r"==", str(req.specifier)), f"{req} must stay a range"


def test_the_image_takes_every_adapters_fast_path() -> None:
    pinned = pins()
    for dist, module in ADAPTERS.items():
        adapter = importlib.import_module(module)
        assert pinned[dist] in adapter.VERIFIED_VERSIONS, (dist, pinned[dist])


@pytest.mark.slow
def test_pip_resolves_the_package_with_the_constraints(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
         "--disable-pip-version-check", "--quiet", "--report", str(tmp_path / "report.json"),
         "-c", str(CONSTRAINTS), str(ROOT)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    report = json.loads((tmp_path / "report.json").read_text())
    chosen = {
        i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
        for i in report["install"]
    }
    for name, version in pins().items():
        assert chosen.get(name) == version, (name, chosen.get(name), version)
