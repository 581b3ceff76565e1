"""Embedded services: real PostgreSQL and Valkey processes on loopback, for ``tenantry up``
and for the test suite (``scripts/services``)."""

from tenantry.devstack.errors import ServiceError
from tenantry.devstack.postgres import PostgresService
from tenantry.devstack.valkey import ValkeyService
from tenantry.devstack.valkey_cluster import ValkeyClusterService

__all__ = ["PostgresService", "ServiceError", "ValkeyClusterService", "ValkeyService"]
