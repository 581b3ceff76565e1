"""The service scripts: idempotent start, status, and the Kafka broker they run."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tenantry.devstack.kafka import KAFKA_VERSION, api_versions_ok, cluster_id

ROOT = Path(__file__).resolve().parents[1]


def test_kafka_broker_answers_and_reports_its_version(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    metadata = admin.list_topics(timeout=10)
    assert [broker.id for broker in metadata.brokers.values()] == [1]
    services = Path(os.environ.get("TENANTRY_SERVICES_DIR", ROOT / ".services"))
    jars = list((services / "kafka-dist").glob(f"*-{KAFKA_VERSION}/libs/kafka_*.jar"))
    assert jars, "the broker's jars come from the fetched distribution"


def test_second_start_is_a_no_op(kafka_bootstrap: str) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [str(ROOT / "scripts" / "services"), "start", "kafka"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "kafka: running at" in result.stdout
    assert time.monotonic() - started < 10  # no fetch, no format, no second broker


def test_status_reports_a_port_with_no_broker_as_down() -> None:
    assert not api_versions_ok("127.0.0.1", 9)  # discard port: nothing speaks Kafka there


@pytest.mark.parametrize("service", ["postgres", "valkey", "kafka"])
def test_status_lists_running_services(service: str, kafka_bootstrap: str) -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "services"), "status", service],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0
    assert result.stdout.startswith(f"{service}: running at")


def test_cluster_ids_are_never_read_as_an_option() -> None:
    """About one random id in 64 starts with '-' in URL-safe base64; the storage tool would
    take it for an option and fail the first start. Every id is 22 characters, 16 bytes."""
    import base64

    ids = {cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    for value in ids:
        assert not value.startswith("-")
        assert len(value) == 22
        assert len(base64.urlsafe_b64decode(value + "==")) == 16
