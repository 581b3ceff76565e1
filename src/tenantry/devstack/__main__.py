"""``python -m tenantry.devstack {start|stop|status} [SERVICE ...]``: postgres, valkey,
valkey-cluster, kafka, prometheus.

The engine behind ``scripts/services``: idempotent start/stop of the real services the
test suite needs, all data under one folder (``$TENANTRY_SERVICES_DIR``, default
``.services``). Ports come from ``$TENANTRY_TEST_PG_PORT`` / ``$TENANTRY_TEST_VALKEY_PORT``
/ ``$TENANTRY_TEST_VALKEY_CLUSTER_PORTS`` (comma-separated, three or more) /
``$TENANTRY_TEST_KAFKA_PORT`` (the controller listens on the next port) /
``$TENANTRY_TEST_PROMETHEUS_PORT``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tenantry.devstack.errors import ServiceError
from tenantry.devstack.kafka import KafkaService
from tenantry.devstack.postgres import PostgresService
from tenantry.devstack.prometheus import PrometheusService
from tenantry.devstack.valkey import ValkeyService
from tenantry.devstack.valkey_cluster import DEFAULT_PORTS, ValkeyClusterService

USAGE = (
    "usage: scripts/services {start|stop|status} "
    "[postgres|valkey|valkey-cluster|kafka|prometheus ...]"
)


def _ports(raw: str | None) -> tuple[int, ...]:
    if not raw:
        return DEFAULT_PORTS
    return tuple(int(part) for part in raw.split(",") if part.strip())


def services(
    root: Path,
) -> dict[
    str,
    PostgresService | ValkeyService | ValkeyClusterService | KafkaService | PrometheusService,
]:
    """The services this project's tests use, keyed by name."""
    return {
        "postgres": PostgresService(
            root / "postgres", port=int(os.environ.get("TENANTRY_TEST_PG_PORT", "54329"))
        ),
        "valkey": ValkeyService(
            root / "valkey", port=int(os.environ.get("TENANTRY_TEST_VALKEY_PORT", "63799"))
        ),
        "valkey-cluster": ValkeyClusterService(
            root / "valkey-cluster",
            ports=_ports(os.environ.get("TENANTRY_TEST_VALKEY_CLUSTER_PORTS")),
        ),
        "kafka": KafkaService(
            root / "kafka", port=int(os.environ.get("TENANTRY_TEST_KAFKA_PORT", "19092"))
        ),
        "prometheus": PrometheusService(
            root / "prometheus",
            port=int(os.environ.get("TENANTRY_TEST_PROMETHEUS_PORT", "19090")),
        ),
    }


def main(argv: list[str]) -> int:
    """Run one action on the named services (all of them when none is named)."""
    if not argv or argv[0] not in {"start", "stop", "status"}:
        print(USAGE, file=sys.stderr)
        return 2
    action, names = argv[0], argv[1:]
    known = services(Path(os.environ.get("TENANTRY_SERVICES_DIR", ".services")).absolute())
    unknown = [name for name in names if name not in known]
    if unknown:
        print(
            f"unknown service(s): {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr
        )
        return 2
    code = 0
    for name in names or list(known):
        service = known[name]
        try:
            if action == "start":
                service.start()
                print(f"{name}: running at {service.url}")
            elif action == "stop":
                service.stop()
                print(f"{name}: stopped")
            else:
                running = service.is_running()
                print(f"{name}: {'running at ' + service.url if running else 'stopped'}")
                code = code or (0 if running else 3)
        except ServiceError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            code = 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
