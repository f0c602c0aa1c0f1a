"""``mwl-bridge run``: the whole bridge in one command, as supervised child processes.

What it does, in order:

1. With no ``redis.url`` it starts the embedded redis-server (:mod:`bridge.store.embedded_redis`),
   then checks the server (:mod:`bridge.store.redis_checks`: eviction refused with exit 2,
   a durability gap logged at WARNING).
2. It writes the merged settings (file + env + flags, Redis URL filled in) to a private
   TOML file and starts ``python -m bridge listen``, ``worker.workers`` times
   ``python -m bridge worker``, ``python -m bridge outbound`` (only when
   ``outbound.host`` is set) and ``python -m bridge scp`` with ``--config`` pointing
   at it; the ``MWL_BRIDGE_*`` variables are removed from the children's environment so
   every child sees exactly the supervisor's settings.
3. It logs a banner (ports, AE title, Redis with the password masked, mapping file) and
   serves ``/metrics`` (the sum over all children), ``/healthz`` and ``/readyz`` (Redis
   answers, the MLLP and DICOM ports accept connections, a worker is alive) when
   ``obs.metrics_port`` is set.
4. On SIGINT or SIGTERM it stops the children (SIGTERM, SIGKILL after
   ``stop_timeout_s``), then Redis, and exits 0.

Restart policy: a child that exits on its own is restarted after a back-off that doubles
from 1 s to 30 s and resets once the child has run for a minute — an order feed must
not stay down because one process hit a bug, and the senders re-send while the listener
is away. Two exits are not retried: exit code 2 (the child says its configuration is
invalid; a restart cannot fix that) and the death of the embedded Redis (everything
depends on it); both stop the whole tree and ``run`` exits non-zero.

No orphans: every child is started in its own session (a terminal's Ctrl-C reaches only
the supervisor, which then stops children in order, Redis last) and with
``PR_SET_PDEATHSIG`` so the kernel stops it if the supervisor is SIGKILLed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType

from bridge import __version__
from bridge.core import localzone, metrics
from bridge.core.config_file import render
from bridge.core.lifeline import die_with_parent
from bridge.core.logs import fields
from bridge.core.settings import DEFAULT_CONFIG_ENV, ENV_ALIASES, ENV_PREFIX, Settings, mask_url
from bridge.ops import redis_metrics
from bridge.store import redis_checks
from bridge.store.connections import sync_client
from bridge.store.embedded_redis import EmbeddedRedis
from bridge.store.keys import Keys

log = logging.getLogger(__name__)

EXIT_CONFIG = 2


@dataclass
class ChildSpec:
    """One supervised process: a name for logs and the command to run."""

    name: str
    argv: list[str]


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive short-lived runs, drives the back-off
    restart_at: float | None = None
    restarts: int = 0
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Starts, watches, restarts and stops a set of child processes.

    Call :meth:`start`, then :meth:`poll` regularly (it restarts children and returns an
    exit code when the whole tree must stop), then :meth:`stop`.
    """

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        env: Mapping[str, str] | None = None,
        stop_timeout_s: float = 10.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 60.0,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self._children = [_Child(spec) for spec in specs]
        self._env = dict(os.environ if env is None else env)
        self.stop_timeout_s = stop_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self._on_exit = on_exit

    @property
    def children(self) -> dict[str, subprocess.Popen[bytes] | None]:
        return {c.spec.name: c.proc for c in self._children}

    def restarts(self, name: str) -> int:
        return next(c.restarts for c in self._children if c.spec.name == name)

    def alive(self, prefix: str = "") -> int:
        return sum(
            1
            for c in self._children
            if c.spec.name.startswith(prefix) and c.proc is not None and c.proc.poll() is None
        )

    def _spawn(self, child: _Child) -> None:
        # Own session: a terminal's SIGINT reaches only the supervisor, which stops the
        # children in order. Death signal: no orphan if the supervisor is SIGKILLed.
        child.proc = subprocess.Popen(
            child.spec.argv,
            env=self._env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        child.pids.append(child.proc.pid)
        log.info("child.started", extra=fields(child=child.spec.name, pid=child.proc.pid))

    def start(self) -> None:
        for child in self._children:
            self._spawn(child)

    def poll(self) -> int | None:
        """Reap and restart; returns an exit code when the whole tree must stop."""
        now = time.monotonic()
        for child in self._children:
            proc = child.proc
            if proc is not None and proc.poll() is not None:
                code = proc.returncode
                child.proc = None
                if self._on_exit is not None:
                    self._on_exit(proc.pid)
                if code == EXIT_CONFIG:
                    log.error(
                        "child.config_error",
                        extra=fields(child=child.spec.name, pid=proc.pid, code=code),
                    )
                    return EXIT_CONFIG
                ran = now - child.started_at
                child.failures = 1 if ran >= self.stable_after_s else child.failures + 1
                delay = min(self.backoff_initial_s * 2 ** (child.failures - 1), self.backoff_max_s)
                child.restart_at = now + delay
                log.error(
                    "child.exited",
                    extra=fields(
                        child=child.spec.name,
                        pid=proc.pid,
                        code=code,
                        ran_s=round(ran, 1),
                        restart_in_s=delay,
                    ),
                )
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)
        return None

    def stop(self) -> None:
        """SIGTERM every child, wait up to ``stop_timeout_s``, SIGKILL what is left."""
        running = [c for c in self._children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            log.info("child.stopping", extra=fields(child=child.spec.name, pid=child.proc.pid))
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("child.kill", extra=fields(child=child.spec.name, pid=child.proc.pid))
                child.proc.kill()
                child.proc.wait(timeout=5)
        for child in self._children:
            if child.proc is not None:
                child.proc.poll()
                if self._on_exit is not None:
                    self._on_exit(child.proc.pid)
            child.proc = None
            child.restart_at = None


# -- mwl-bridge run ----------------------------------------------------------------------
def child_env(base: Mapping[str, str]) -> dict[str, str]:
    """The supervisor's environment without settings variables: children get their
    settings from the rendered config file only."""
    drop = {DEFAULT_CONFIG_ENV, *ENV_ALIASES}
    return {k: v for k, v in base.items() if not k.startswith(ENV_PREFIX) and k not in drop}


def role_specs(config_path: Path, workers: int, outbound: bool = False) -> list[ChildSpec]:
    """The children of ``run``; ``outbound`` adds the delivery of procedure status to the
    RIS (one process: ``outbound.host`` is set)."""
    base = [sys.executable, "-m", "bridge"]
    cfg = ["--config", str(config_path)]
    specs = [ChildSpec("listener", [*base, "listen", *cfg])]
    specs += [ChildSpec(f"worker-{n}", [*base, "worker", *cfg]) for n in range(1, workers + 1)]
    if outbound:
        specs.append(ChildSpec("outbound", [*base, "outbound", *cfg]))
    specs.append(ChildSpec("scp", [*base, "scp", *cfg]))
    return specs


def _tcp_open(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except OSError:
        return False


def banner(settings: Settings, redis_desc: str, config: str, metrics_port: int | None) -> str:
    m, s, w, o = settings.mllp, settings.scp, settings.worker, settings.outbound
    mapping = w.mapping or "built-in IHE mapping (mappings/ihe-rad.yaml)"
    zone = localzone.resolve(w.local_timezone)
    lines = [
        f"mwl-bridge {__version__}",
        f"  HL7 MLLP listener  {m.host}:{m.port}  (ack mode {m.ack_mode}"
        + (", TLS" if m.tls_cert_file else "")
        + ")",
        f"  DICOM SCP          {s.host}:{s.port}  AE title {s.ae_title}  (MWL C-FIND, MPPS)",
        f"  Workers            {w.workers}",
        "  Status to the RIS  "
        + (f"{o.host}:{o.port}" + (" (TLS)" if o.tls else "") if o.host else "off"),
        f"  Redis              {redis_desc}",
        f"  Mapping            {mapping}",
        f"  Time zone (DA/TM)  {zone.name} ({zone.source})",
        f"  Config             {config}",
        "  Metrics            "
        + (f"http://{settings.obs.metrics_host}:{metrics_port}/metrics" if metrics_port else "off"),
        "  Stop with Ctrl-C or SIGTERM.",
    ]
    return "\n".join(lines)


def command(settings: Settings, args: argparse.Namespace) -> int:
    """Entry point of ``mwl-bridge run``."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    run_dir = Path(tempfile.mkdtemp(prefix="mwl-bridge-run-"))
    redis_server: EmbeddedRedis | None = None
    supervisor: Supervisor | None = None
    server: metrics.MetricsServer | None = None
    code = 0
    try:
        if settings.redis.url:
            url = settings.redis.url
            redis_desc = mask_url(url)
        else:
            redis_server = EmbeddedRedis(settings.redis)
            try:
                url = redis_server.start()
            except RuntimeError as exc:
                log.error("run.redis_failed", extra=fields(error=str(exc)))
                print(f"mwl-bridge: embedded Redis did not start: {exc}", file=sys.stderr)
                redis_server = None
                code = 1
                return code
            redis_desc = (
                f"embedded {url} (redis-server {redis_server.version()}, AOF always, "
                f"data {redis_server.dir}, log {redis_server.log_file})"
            )
        if stop.is_set():
            return 0

        child_settings = replace(
            settings,
            redis=replace(settings.redis, url=url),
            obs=replace(settings.obs, metrics_port=0),
        )
        config_path = run_dir / "settings.toml"
        config_path.write_text(render(child_settings))
        config_path.chmod(0o600)  # may hold a Redis password
        env = child_env(os.environ)

        metrics_dir: Path | None = None
        if settings.obs.metrics_port:
            metrics_dir = run_dir / "metrics"
            metrics_dir.mkdir()
            env[metrics.MULTIPROC_ENV] = str(metrics_dir)

        def mark_dead(pid: int) -> None:
            if metrics_dir is not None:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]

        supervisor = Supervisor(
            role_specs(config_path, settings.worker.workers, bool(settings.outbound.host)),
            env=env,
            on_exit=mark_dead,
        )
        if metrics_dir is not None:
            server = _serve_metrics(settings, url, metrics_dir, supervisor, redis_server)

        # After the metrics port (a setting error found without Redis, and /readyz says
        # "redis": false while we wait), before any child: the children check again
        # (each role does), but a refusal here is one line and exit 2 before anything
        # starts. The embedded server is ours (AOF always, noeviction) and checked all
        # the same, it is cheap.
        redis_checks.check_at_start(settings.redis, url, stop=stop)
        if stop.is_set():
            return 0

        config_desc = (
            getattr(args, "config", None)
            or os.environ.get(DEFAULT_CONFIG_ENV)
            or ("defaults + environment + flags")
        )
        text = banner(settings, redis_desc, config_desc, server.port if server else None)
        if settings.obs.log_format == "text":
            print(text, file=sys.stderr, flush=True)
        log.info(
            "run.starting",
            extra=fields(
                mllp_port=settings.mllp.port,
                dicom_port=settings.scp.port,
                ae_title=settings.scp.ae_title,
                workers=settings.worker.workers,
                redis=mask_url(url),
                embedded_redis=redis_server is not None,
                mapping=settings.worker.mapping or "builtin",
                outbound=(
                    f"{settings.outbound.host}:{settings.outbound.port}"
                    if settings.outbound.host
                    else "off"
                ),
            ),
        )
        supervisor.start()
        while not stop.wait(0.2):
            if redis_server is not None and not redis_server.alive():
                log.error("run.redis_died", extra=fields(log=str(redis_server.log_file)))
                code = 1
                break
            result = supervisor.poll()
            if result is not None:
                code = result
                break
        if received:
            log.info("run.stopping", extra=fields(signal=signal.Signals(received[0]).name))
        return code
    finally:
        if supervisor is not None:
            supervisor.stop()
        if server is not None:
            server.close()
            for name in ("redis", "mllp", "scp", "workers"):
                metrics.unregister_readiness(name)
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        log.info("run.stopped", extra=fields(code=code))


def _serve_metrics(
    settings: Settings,
    url: str,
    metrics_dir: Path,
    supervisor: Supervisor,
    redis_server: EmbeddedRedis | None,
) -> metrics.MetricsServer:
    client = sync_client(settings.redis, url)
    registry = metrics.aggregate_registry(str(metrics_dir))
    registry.register(redis_metrics.RedisCollector(client, Keys(settings.redis.key_prefix)))
    metrics.register_readiness("redis", redis_metrics.redis_ping_check(client))
    metrics.register_readiness("mllp", lambda: _tcp_open(settings.mllp.host, settings.mllp.port))
    metrics.register_readiness("scp", lambda: _tcp_open(settings.scp.host, settings.scp.port))
    metrics.register_readiness("workers", lambda: supervisor.alive("worker-") > 0)
    server = metrics.MetricsServer(
        settings.obs.metrics_host, settings.obs.metrics_port, registry
    ).start()
    log.info("metrics.listening", extra=fields(port=server.port))
    return server
