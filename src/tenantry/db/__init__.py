"""PostgreSQL access: cells and pools, tenant-bound transactions, the tenant schema."""

from tenantry.db.binding import begin_statement
from tenantry.db.cell import Cell
from tenantry.db.database import Database
from tenantry.db.errors import (
    DatabaseError,
    DatabaseUnavailableError,
    TransactionAbortedError,
    UnknownCellError,
)
from tenantry.db.tenant_schema import (
    CompiledStep,
    CompiledTenantSchema,
    SchemaDefinitionError,
    SchemaStep,
    TenantSchema,
)

__all__ = [
    "Cell",
    "CompiledStep",
    "CompiledTenantSchema",
    "Database",
    "DatabaseError",
    "DatabaseUnavailableError",
    "SchemaDefinitionError",
    "SchemaStep",
    "TenantSchema",
    "TransactionAbortedError",
    "UnknownCellError",
    "begin_statement",
]
