"""The package layout: sub-packages by stage, imports pointing one way (the matrix in each
sub-package's ``MAY_IMPORT``), and library internals only in the ``*_compat.py`` adapters.

Both checks read the source with ``ast`` (nothing is imported), and each is shown to fail
on a planted violation, so a passing run means the tree is clean, not that the check is
blind.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import bridge

PACKAGE = Path(bridge.__file__).parent
STAGES = ("core", "hl7", "store", "intake", "mllp", "outbound", "worker", "scp", "ops")
#: Modules directly under bridge/: the package doc, ``python -m bridge`` and the shims
#: of the paths before the layout by stage (rq job name, Docker health check).
TOP_LEVEL = {"__init__", "__main__", "jobs", "healthcheck"}
LIBRARIES = ("rq", "pynetdicom", "hl7apy")


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def stage_of(path: Path) -> str | None:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else None


def bridge_imports(source: str, module: str) -> set[str]:
    """The ``bridge.<stage>`` sub-packages a module's source imports (relative too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join([*parent, base] if base else parent)
            names = [base] + [f"{base}.{a.name}" for a in node.names if base == "bridge"]
        for name in names:
            parts = name.split(".")
            if parts[0] == "bridge" and len(parts) > 1 and parts[1] in STAGES:
                out.add(parts[1])
    return out


def layer_violations(stage: str, source: str, module: str) -> list[str]:
    allowed = {stage, *importlib.import_module(f"bridge.{stage}").MAY_IMPORT}
    return sorted(f"{module} imports bridge.{s}" for s in bridge_imports(source, module) - allowed)


def test_every_module_lives_in_a_stage_package() -> None:
    loose = {p.stem for p in modules() if stage_of(p) is None}
    assert loose == TOP_LEVEL
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == set(STAGES)


def test_each_stage_says_what_it_takes_hands_on_and_may_import() -> None:
    for stage in STAGES:
        pkg = importlib.import_module(f"bridge.{stage}")
        doc = " ".join((pkg.__doc__ or "").split())
        for phrase in ("Takes in", "Hands on", "May import"):
            assert phrase in doc, (stage, phrase)
        assert set(pkg.MAY_IMPORT) <= set(STAGES) - {stage}, stage
        if "May import: every stage" not in doc:
            for name in pkg.MAY_IMPORT:
                assert f"``{name}``" in doc, (stage, name)


def test_the_matrix_points_one_way() -> None:
    """core at the bottom, ops at the top, no cycle, and the named rules of the issue."""
    allowed = {s: set(importlib.import_module(f"bridge.{s}").MAY_IMPORT) for s in STAGES}
    assert allowed["core"] == set()
    assert allowed["ops"] == set(STAGES) - {"ops"}
    assert all("core" in deps for s, deps in allowed.items() if s != "core")
    assert not any("ops" in deps for deps in allowed.values())
    assert "worker" not in allowed["scp"]
    assert not {"worker", "scp"} & allowed["mllp"]
    assert not {"mllp", "scp"} & allowed["worker"]
    # Outbound delivery sits beside the workers: they name its job by string, and only
    # the top layer (the delivery role, status, replay) imports it.
    assert {s for s, deps in allowed.items() if "outbound" in deps} == {"ops"}
    assert "outbound" not in allowed["worker"]
    order: list[str] = []
    pending = dict(allowed)
    while pending:
        ready = [s for s, deps in pending.items() if deps <= set(order)]
        assert ready, f"import cycle among {sorted(pending)}"
        order += sorted(ready)
        for s in ready:
            del pending[s]


def test_imports_follow_the_matrix() -> None:
    violations = []
    for path in modules():
        stage = stage_of(path)
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if stage is None:
            if path.stem == "__init__":
                assert not bridge_imports(path.read_text(), module)
            continue
        violations += layer_violations(stage, path.read_text(), module)
    assert violations == []


def test_the_matrix_check_catches_a_sideways_import() -> None:
    planted = "from bridge.worker.lifecycle import Planner\nfrom ..worker import jobs\n"
    assert layer_violations("scp", planted, "bridge.scp.handlers") == [
        "bridge.scp.handlers imports bridge.worker"
    ]
    assert layer_violations("mllp", "import bridge.scp.server\n", "bridge.mllp.listener")
    assert layer_violations("core", "from bridge.store.keys import Keys\n", "bridge.core.logs")
    assert not layer_violations("worker", "from bridge.intake import deadletter\n", "m")
    assert layer_violations("worker", "from bridge.outbound import delivery\n", "m")
    assert not layer_violations("outbound", "from bridge.mllp.client import parse_ack\n", "m")


# -- library internals ------------------------------------------------------------------

#: Internal names of the three libraries that carry no leading underscore.
INTERNAL_NAMES = frozenset({
    "to_provider_queue", "send_msg", "send_pdu", "dul", "dimse", "maximum_pdu_size",
    "load_library", "cls_attrs",
    "redis_queue_namespace_prefix", "redis_job_namespace_prefix", "WORKERS_BY_QUEUE_KEY",
    "worker_registration", "rate_limit", "release_slot", "run_maintenance_tasks",
    "handle_job_success", "handle_execution_ended", "prepare_job_execution",
    "prepare_execution", "check_for_suspension",
})  # fmt: skip
#: Underscore names that are public API (namedtuple methods).
PUBLIC_UNDERSCORE = frozenset({"_replace", "_asdict", "_fields", "_make"})


def _is_library(module: str) -> bool:
    return module.split(".")[0] in LIBRARIES


def own_private_names() -> set[str]:
    """Every ``_name`` the bridge itself defines (outside the adapters)."""
    names: set[str] = set()
    for path in modules():
        if path.name.endswith("_compat.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return {n for n in names if n.startswith("_")}


def library_internals(source: str, ours: set[str]) -> list[str]:
    """Uses of rq/pynetdicom/hl7apy internals in ``source``: private modules or names,
    known internal attributes, private attributes on library objects, subclasses of
    library classes (overrides of their methods), and getattr/setattr of such names."""
    tree = ast.parse(source)
    found: list[str] = []
    library_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _is_library(a.name):
                    library_names.add((a.asname or a.name).split(".")[0])
                    if any(p.startswith("_") for p in a.name.split(".")):
                        found.append(f"import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and _is_library(node.module):
            if any(p.startswith("_") for p in node.module.split(".")):
                found.append(f"from {node.module} import")
            for a in node.names:
                library_names.add(a.asname or a.name)
                if a.name.startswith("_") or a.name in INTERNAL_NAMES:
                    found.append(f"from {node.module} import {a.name}")
                if node.module.split(".")[-1] in INTERNAL_NAMES:
                    found.append(f"from {node.module} import {a.name}")
    if not library_names:
        return found
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = node.attr
            private = name.startswith("_") and not name.startswith("__")
            foreign = name not in ours and name not in PUBLIC_UNDERSCORE
            if name in INTERNAL_NAMES or (private and foreign):
                found.append(f".{name}")
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                if isinstance(base, ast.Name) and base.id in library_names:
                    found.append(f"class {node.name}({base.id})")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            name = node.args[1].value
            if name in INTERNAL_NAMES or (name.startswith("_") and name not in ours):
                found.append(f"{node.func.id}(..., {name!r})")
    return found


def test_library_internals_only_in_the_adapters() -> None:
    ours = own_private_names()
    found = {}
    for path in modules():
        if path.name.endswith("_compat.py"):
            continue
        uses = library_internals(path.read_text(), ours)
        if uses:
            found[str(path.relative_to(PACKAGE))] = uses
    assert found == {}


@pytest.mark.parametrize(
    "planted",
    [
        "from pynetdicom._handlers import standard_dimse_sent_handler\n",
        "from pynetdicom import _config\n",
        "import rq\ndef f(job):\n    return job._status\n",
        "from rq.job import Job\nKEY = Job.redis_job_namespace_prefix\n",
        "from rq import SimpleWorker\nclass Lean(SimpleWorker):\n    pass\n",
        "import hl7apy\nhl7apy.load_library = None\n",
        "from pynetdicom import AE\ndef f(assoc):\n    return assoc.dul.to_provider_queue\n",
        "from pynetdicom import AE\ndef f(a):\n    return getattr(a, 'to_provider_queue')\n",
        "from rq.worker_registration import WORKERS_BY_QUEUE_KEY\n",
    ],
)
def test_the_internals_scan_catches_a_planted_use(planted: str) -> None:
    assert library_internals(planted, own_private_names())


def test_the_adapters_exist_with_their_verified_versions() -> None:
    for module in ("bridge.hl7.hl7apy_compat", "bridge.worker.rq_compat",
                   "bridge.scp.pynetdicom_compat"):  # fmt: skip
        adapter = importlib.import_module(module)
        assert adapter.VERIFIED_VERSIONS and isinstance(adapter.FAST, bool)
