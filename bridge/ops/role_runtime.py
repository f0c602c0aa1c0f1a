"""What every long-running role (listener, worker, SCP) runs beside its real work.

``RoleRuntime.start(settings, "listener")`` announces the process with a heartbeat (so
``mwl-bridge status`` lists it) and, when ``obs.metrics_port`` is set, serves
``/metrics``, ``/healthz`` and ``/readyz`` with the Redis state and a Redis readiness
check. The role then registers its own readiness (``metrics.register_readiness``, e.g.
"mllp" once the socket is bound) and calls :meth:`RoleRuntime.stop` when it exits.

Under ``mwl-bridge run`` the supervisor sets ``obs.metrics_port = 0`` for its children
and serves the sum of their metrics itself, so no child opens a port.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.core import metrics
from bridge.core.settings import Settings
from bridge.ops import redis_metrics
from bridge.ops.heartbeat import Heartbeat
from bridge.store.connections import sync_client
from bridge.store.keys import Keys


@dataclass
class RoleRuntime:
    heartbeat: Heartbeat
    server: metrics.MetricsServer | None

    @classmethod
    def start(cls, settings: Settings, role: str) -> RoleRuntime:
        client = sync_client(settings.redis)
        keys = Keys(settings.redis.key_prefix)
        heartbeat = Heartbeat(client, keys, role).start()
        server = None
        if settings.obs.metrics_port:
            try:
                server = redis_metrics.serve(
                    settings.obs.metrics_host, settings.obs.metrics_port, client, keys
                )
            except BaseException:
                heartbeat.stop()
                raise
        return cls(heartbeat, server)

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            metrics.unregister_readiness("redis")
        self.heartbeat.stop()
