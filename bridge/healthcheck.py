"""``python3 -m bridge.healthcheck``: the Docker health check of releases before the layout
by stage (orchestrator probes may still name it); see :mod:`bridge.ops.healthcheck`."""

from bridge.ops.healthcheck import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
