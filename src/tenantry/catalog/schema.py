"""The control plane's own tables, in schema ``tenantry`` of the control database.

Applied idempotently by :func:`tenantry.catalog.bootstrap`; every statement tolerates
being run again, and concurrent bootstraps are serialised by an advisory lock.
"""

from __future__ import annotations

from psycopg import sql

BOOTSTRAP_LOCK = 0x7E4A47  # advisory lock key: one bootstrap at a time per database
NOTIFY_CHANNEL = "tenantry_catalog"

CONTROL_PLANE_DDL = """
CREATE SCHEMA IF NOT EXISTS tenantry;
CREATE TABLE IF NOT EXISTS tenantry.tenants (
    id              uuid PRIMARY KEY,
    slug            text NOT NULL UNIQUE,
    name            text NOT NULL,
    tier            text NOT NULL CHECK (tier IN ('free', 'pro', 'enterprise')),
    ring            smallint NOT NULL DEFAULT 0 CHECK (ring >= 0),
    status          text NOT NULL CHECK (status IN
                        ('provisioning', 'active', 'suspended', 'offboarding', 'deleted')),
    isolation       text NOT NULL DEFAULT 'schema' CHECK (isolation IN ('schema', 'pool', 'silo')),
    cell            text NOT NULL DEFAULT 'default',
    schema_name     text NOT NULL UNIQUE,
    schema_version  text,
    attributes      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
CREATE INDEX IF NOT EXISTS tenants_status_idx ON tenantry.tenants (status);
CREATE TABLE IF NOT EXISTS tenantry.domains (
    host        text PRIMARY KEY CHECK (host = lower(host)),
    tenant_id   uuid NOT NULL REFERENCES tenantry.tenants (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS domains_tenant_idx ON tenantry.domains (tenant_id);
CREATE TABLE IF NOT EXISTS tenantry.lifecycle_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    action      text NOT NULL,
    actor       text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS lifecycle_log_tenant_idx ON tenantry.lifecycle_log (tenant_id, id);
CREATE TABLE IF NOT EXISTS tenantry.spare_schemas (
    schema_name     text PRIMARY KEY,
    schema_version  text,
    cell            text NOT NULL DEFAULT 'default',
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- A claim takes the oldest spare of its cell and version: the first unlocked index entry.
CREATE INDEX IF NOT EXISTS spare_schemas_claim_idx
    ON tenantry.spare_schemas (cell, schema_version, created_at);
-- Sign-up from the warm pool no longer renames a spare (spares keep their opaque names
-- and are claimed with pure DML, see tenantry.provisioning.spares); the function that did
-- is dropped from databases bootstrapped before.
DROP FUNCTION IF EXISTS tenantry.claim_or_build_schema(text, text, text, text);
-- Fleet migrations (tenantry.migrations). The ledger of tenant schemas is
-- tenants.schema_version; the control plane's own chain has one ledger row here. Each
-- migration transaction starts with a compare-and-set through these functions, so a step
-- can never be applied twice, whatever was killed and whoever runs concurrently.
CREATE TABLE IF NOT EXISTS tenantry.control_plane_version (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    version     text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tenantry.control_plane_version (id) VALUES (true) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS tenantry.migration_failures (
    tenant_id       uuid PRIMARY KEY REFERENCES tenantry.tenants (id) ON DELETE CASCADE,
    from_version    text,
    target_version  text,
    error           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 1,
    failed_at       timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION tenantry.advance_schema_version(
    p_tenant uuid, p_from text, p_to text, p_actor text
) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    UPDATE tenantry.tenants SET schema_version = p_to, updated_at = now()
    WHERE id = p_tenant AND schema_version IS NOT DISTINCT FROM p_from;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % is no longer at schema version %', p_tenant, p_from
            USING ERRCODE = 'TY001', HINT = 'another migration run moved it first';
    END IF;
    DELETE FROM tenantry.migration_failures WHERE tenant_id = p_tenant;
    INSERT INTO tenantry.lifecycle_log (tenant_id, action, actor, detail)
    VALUES (p_tenant, 'migrate', p_actor, jsonb_build_object('from', p_from, 'to', p_to));
END
$fn$;
CREATE OR REPLACE FUNCTION tenantry.advance_control_plane_version(p_from text, p_to text)
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    UPDATE tenantry.control_plane_version SET version = p_to, updated_at = now()
    WHERE id AND version IS NOT DISTINCT FROM p_from;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the control plane is no longer at version %', p_from
            USING ERRCODE = 'TY001', HINT = 'another migration run moved it first';
    END IF;
END
$fn$;
"""


def app_role_ddl(role: str, password: str | None) -> sql.Composed:
    """Create (or tighten) the application role: it can log in and owns nothing.

    It may read the catalog (to resolve tenants) and nothing else in ``tenantry``.

    Roles belong to the whole PostgreSQL cluster, while the bootstrap's advisory lock is
    per database: processes bootstrapping *different* databases of one cluster (cells, or
    a test run's databases) may alter the role at the same moment, which PostgreSQL
    refuses with "tuple concurrently updated". So the role is altered only when it is not
    already as wanted (or a password is to be set), and that one race is retried.
    """
    pw = (
        sql.SQL(" || format(' PASSWORD %L', {})").format(sql.Literal(password))
        if password
        else sql.SQL("")
    )
    return sql.SQL(
        """
DO $tenantry$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) THEN
        CREATE ROLE {role} LOGIN;
    END IF;
-- Another database's bootstrap created it meanwhile: duplicate_object, or unique_violation
-- when both inserted the catalog row at once.
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $tenantry$;
DO $tenantry$
DECLARE
    v_message text;
BEGIN
    FOR v_attempt IN 1 .. 10 LOOP
        BEGIN
            IF {set_password} OR EXISTS (
                SELECT FROM pg_roles WHERE rolname = {name} AND (
                    NOT rolcanlogin OR rolsuper OR rolcreatedb OR rolcreaterole
                    OR rolbypassrls OR rolreplication))
            THEN
                EXECUTE format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE '
                               'NOBYPASSRLS NOREPLICATION', {name}){pw};
            END IF;
            RETURN;
        EXCEPTION WHEN internal_error THEN
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
            IF v_message <> 'tuple concurrently updated' OR v_attempt = 10 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.02 * v_attempt);
        END;
    END LOOP;
END $tenantry$;
GRANT USAGE ON SCHEMA tenantry TO {role};
GRANT SELECT ON tenantry.tenants, tenantry.domains TO {role};
"""
    ).format(
        name=sql.Literal(role),
        role=sql.Identifier(role),
        pw=pw,
        set_password=sql.SQL("true" if password else "false"),
    )
