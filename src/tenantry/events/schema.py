"""The events tables, in the control plane (schema ``tenantry``), one set per database.

- ``tenantry.outbox``: events committed with their business writes, waiting for the relay
  (Kafka mode) or read in place as the log (embedded mode). ``txid`` is the writing
  transaction's id: the embedded log reads in ``(txid, seq)`` order, and only rows below
  the oldest transaction still running, so a slow transaction cannot be skipped.
- ``tenantry.audit_log`` / ``tenantry.audit_heads``: each tenant's hash chain of every
  event it published, and the chain's current head (position and hash), appended at
  commit by a deferred trigger on the outbox (``tenantry.chain_audit``).
- ``tenantry.inbox``: ``(consumer, event_id)`` of each event a consumer has handled,
  written in the handler's own transaction.
- ``tenantry.consumer_offsets``, ``tenantry.dead_letters``: the embedded log's consumer
  positions and dead-letter queue.

The application role publishes only through ``tenantry.publish_events`` and
``tenantry.append_events`` (``SECURITY DEFINER`` functions that take the tenant from the
transaction's ``app.tenant_id``; the second leaves waking the relays to the caller): it
can append events and audit entries for its own tenant, and can neither read nor change
the outbox or the audit trail. Inbox rows it may insert, for its own tenant only (RLS).
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, sql

from tenantry.catalog.bootstrap import run_bootstrap_script

OUTBOX_CHANNEL = "tenantry_outbox"
SHARDS = 64
"""Relays lock outbox rows by shard of tenant (an advisory lock per shard) so that, with
several relays running, one tenant's events are still produced in order."""
RELAY_LOCK = 0x7E4A48
CONSUMER_LOCK = 0x7E4A49

EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS tenantry.outbox (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid NOT NULL,
    tenant_id       uuid NOT NULL,
    tier            text NOT NULL,
    type            text NOT NULL,
    topic           text NOT NULL,
    subject         text,
    shard           smallint NOT NULL,
    schema_version  integer NOT NULL,
    occurred_at     timestamptz NOT NULL,
    traceparent     text,
    payload         jsonb NOT NULL,
    chain_rows      integer  -- see tenantry.chain_audit
);
CREATE INDEX IF NOT EXISTS outbox_log_idx ON tenantry.outbox (txid, seq);
ALTER TABLE tenantry.outbox ADD COLUMN IF NOT EXISTS chain_rows integer;
CREATE TABLE IF NOT EXISTS tenantry.audit_heads (
    tenant_id   uuid PRIMARY KEY,
    position    bigint NOT NULL,
    hash        bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS tenantry.audit_log (
    tenant_id       uuid NOT NULL,
    position        bigint NOT NULL,
    event_id        uuid NOT NULL,
    type            text NOT NULL,
    schema_version  integer NOT NULL,
    occurred_at     timestamptz NOT NULL,
    payload         jsonb NOT NULL,
    prev_hash       bytea NOT NULL,
    hash            bytea NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, position)
);
CREATE TABLE IF NOT EXISTS tenantry.inbox (
    consumer      text NOT NULL,
    event_id      uuid NOT NULL,
    tenant_id     uuid NOT NULL DEFAULT NULLIF(current_setting('app.tenant_id', true), '')::uuid,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
ALTER TABLE tenantry.inbox ENABLE ROW LEVEL SECURITY;
DO $tenantry$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_policies
                   WHERE schemaname = 'tenantry' AND tablename = 'inbox'
                   AND policyname = 'inbox_tenant') THEN
        CREATE POLICY inbox_tenant ON tenantry.inbox
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
    END IF;
END $tenantry$;
CREATE TABLE IF NOT EXISTS tenantry.consumer_offsets (
    consumer    text PRIMARY KEY,
    txid        xid8 NOT NULL DEFAULT '0',
    seq         bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS tenantry.dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer    text NOT NULL,
    event_id    uuid,
    tenant_id   uuid,
    type        text,
    attempts    integer NOT NULL,
    error       text NOT NULL,
    envelope    jsonb NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS dead_letters_consumer_idx ON tenantry.dead_letters (consumer, id);
-- The audit hash of one entry: sha256(previous hash || canonical text of the entry).
-- tenantry.events.audit recomputes it in Python to verify a chain.
CREATE OR REPLACE FUNCTION tenantry.audit_digest(
    p_prev bytea, p_tenant uuid, p_event uuid, p_type text, p_version integer,
    p_occurred timestamptz, p_payload jsonb
) RETURNS bytea LANGUAGE sql IMMUTABLE AS $fn$
    SELECT sha256(p_prev || convert_to(concat_ws('|',
        p_tenant::text, p_event::text, p_type, p_version::text,
        to_char(p_occurred AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        p_payload::text), 'UTF8'))
$fn$;
-- Append events for the transaction's tenant to the outbox. The events come as one JSON
-- array of {id, type, topic, subject, version, payload}, in order: a client encodes one
-- JSON document far faster than seven typed arrays. They join the tenant's audit chain at
-- commit (tenantry.chain_audit below). Nothing wakes the relays: tenantry's own
-- transactions send that NOTIFY right after COMMIT, in the same message
-- (tenantry.db.transaction.notify_after_commit), because a transaction that notifies
-- holds a cluster-wide lock through its commit's WAL flush, and publishers that notified
-- inside would commit one at a time. Returns the transaction's id (text), with which the
-- caller tells a failed commit from a failed wake-up after a commit that stood.
CREATE OR REPLACE FUNCTION tenantry.append_events(
    p_tier text, p_occurred timestamptz, p_traceparent text, p_events jsonb
) RETURNS text LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_tenant uuid := NULLIF(current_setting('app.tenant_id', true), '')::uuid;
BEGIN
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION 'events can only be published in a tenant-bound transaction'
            USING ERRCODE = 'TY002';
    END IF;
    IF jsonb_typeof(p_events) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_events must be a JSON array' USING ERRCODE = '22023';
    END IF;
    INSERT INTO tenantry.outbox (event_id, tenant_id, tier, type, topic, subject, shard,
                                 schema_version, occurred_at, traceparent, payload,
                                 chain_rows)
    SELECT (e->>'id')::uuid, v_tenant, p_tier, e->>'type', e->>'topic', e->>'subject',
           (hashtext(v_tenant::text) & 63)::smallint, (e->>'version')::integer, p_occurred,
           p_traceparent, e->'payload', CASE WHEN n = 1 THEN jsonb_array_length(p_events) END
    FROM jsonb_array_elements(p_events) WITH ORDINALITY AS x (e, n)
    ORDER BY n;
    RETURN pg_current_xact_id()::text;
END
$fn$;
-- Publish events: append them and wake relays and consumers at commit. For any client
-- whose commit tenantry does not send (another language, raw SQL); its signature is
-- unchanged since it was introduced, so processes of an earlier version keep calling it
-- through a rolling deployment or a rollback.
DROP FUNCTION IF EXISTS tenantry.publish_events(text, uuid[], text[], text[], text[],
    integer[], timestamptz[], text, jsonb[]);
CREATE OR REPLACE FUNCTION tenantry.publish_events(
    p_tier text, p_occurred timestamptz, p_traceparent text, p_events jsonb
) RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM tenantry.append_events(p_tier, p_occurred, p_traceparent, p_events);
    PERFORM pg_notify('tenantry_outbox', '');
    RETURN jsonb_array_length(p_events);
END
$fn$;
-- The audit chain is appended at COMMIT, by a deferred constraint trigger on the outbox:
-- the tenant's chain head (tenantry.audit_heads) is locked only while the transaction
-- commits, not from its publish call to its end, so a tenant's publishing transactions
-- take turns for their commits only. The trigger fires once per append_events call, not
-- once per event: only the first row a call writes carries chain_rows (how many rows that
-- call wrote, all of one tenant, with consecutive seq values within this transaction), and
-- the trigger's WHEN clause skips the others. Each firing appends its call's rows in one
-- statement: lock the head, hash the rows in seq order (the running aggregate
-- tenantry.audit_chain), insert them, move the head. Rows of a savepoint that rolled back
-- are gone by then, and so are their trigger events. Firings follow the rows' insertion
-- order, so a transaction's events join the chain in publish order. A row without
-- chain_rows under a trigger without the WHEN clause (written by an earlier version during
-- an upgrade) is appended alone.
CREATE OR REPLACE FUNCTION tenantry.audit_chain_step(
    p_state bytea, p_head bytea, p_tenant uuid, p_event uuid, p_type text, p_version integer,
    p_occurred timestamptz, p_payload jsonb
) RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    RETURN tenantry.audit_digest(coalesce(p_state, p_head), p_tenant, p_event, p_type,
                                 p_version, p_occurred, p_payload);
END
$fn$;
-- audit_chain(head hash, entry...) OVER (ORDER BY ...): each row's hash, chained from the
-- head's.
CREATE OR REPLACE AGGREGATE tenantry.audit_chain(
    bytea, uuid, uuid, text, integer, timestamptz, jsonb
) (SFUNC = tenantry.audit_chain_step, STYPE = bytea);
CREATE OR REPLACE FUNCTION tenantry.chain_audit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_rows integer := coalesce(NEW.chain_rows, 1);
BEGIN
    -- Twice at most: a tenant's first event finds no head; the head is created, then used.
    FOR attempt IN 1..2 LOOP
        IF v_rows = 1 THEN  -- the common case, without the window over the outbox
            WITH head AS MATERIALIZED (
                SELECT h.position, h.hash FROM tenantry.audit_heads h
                WHERE h.tenant_id = NEW.tenant_id FOR UPDATE
            ), added AS (
                INSERT INTO tenantry.audit_log (tenant_id, position, event_id, type,
                                                schema_version, occurred_at, payload,
                                                prev_hash, hash)
                SELECT NEW.tenant_id, head.position + 1, NEW.event_id, NEW.type,
                       NEW.schema_version, NEW.occurred_at, NEW.payload, head.hash,
                       tenantry.audit_digest(head.hash, NEW.tenant_id, NEW.event_id, NEW.type,
                                             NEW.schema_version, NEW.occurred_at, NEW.payload)
                FROM head
                RETURNING position, hash
            )
            UPDATE tenantry.audit_heads h SET position = a.position, hash = a.hash
            FROM added a WHERE h.tenant_id = NEW.tenant_id;
        ELSE
            WITH head AS MATERIALIZED (
                SELECT h.position, h.hash FROM tenantry.audit_heads h
                WHERE h.tenant_id = NEW.tenant_id FOR UPDATE
            ), chained AS (
                SELECT o.event_id, o.type, o.schema_version, o.occurred_at, o.payload,
                       head.hash AS start, head.position + row_number() OVER w AS position,
                       tenantry.audit_chain(head.hash, o.tenant_id, o.event_id, o.type,
                                            o.schema_version, o.occurred_at, o.payload) OVER w
                           AS hash
                FROM head, (SELECT * FROM tenantry.outbox x
                            WHERE x.txid = NEW.txid AND x.seq >= NEW.seq
                            ORDER BY x.seq LIMIT v_rows) o
                WINDOW w AS (ORDER BY o.seq ROWS UNBOUNDED PRECEDING)
            ), added AS (
                INSERT INTO tenantry.audit_log (tenant_id, position, event_id, type,
                                                schema_version, occurred_at, payload, prev_hash,
                                                hash)
                SELECT NEW.tenant_id, c.position, c.event_id, c.type, c.schema_version,
                       c.occurred_at, c.payload,
                       lag(c.hash, 1, c.start) OVER (ORDER BY c.position), c.hash
                FROM chained c
                RETURNING position, hash
            )
            UPDATE tenantry.audit_heads h SET position = a.position, hash = a.hash
            FROM (SELECT position, hash FROM added ORDER BY position DESC LIMIT 1) a
            WHERE h.tenant_id = NEW.tenant_id;
        END IF;
        IF FOUND THEN
            RETURN NULL;
        END IF;
        INSERT INTO tenantry.audit_heads (tenant_id, position, hash)
        VALUES (NEW.tenant_id, 0,
                '\\x0000000000000000000000000000000000000000000000000000000000000000')
        ON CONFLICT (tenant_id) DO NOTHING;
    END LOOP;
    RAISE EXCEPTION 'event % of tenant % could not join its audit chain',
        NEW.event_id, NEW.tenant_id;
END
$fn$;
REVOKE ALL ON FUNCTION tenantry.chain_audit() FROM PUBLIC;
DO $tenantry$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'outbox_audit_chain'
                   AND tgrelid = 'tenantry.outbox'::regclass AND tgqual IS NOT NULL) THEN
        DROP TRIGGER IF EXISTS outbox_audit_chain ON tenantry.outbox;
        CREATE CONSTRAINT TRIGGER outbox_audit_chain AFTER INSERT ON tenantry.outbox
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            WHEN (NEW.chain_rows IS NOT NULL) EXECUTE FUNCTION tenantry.chain_audit();
    END IF;
END $tenantry$;
REVOKE ALL ON FUNCTION tenantry.publish_events(text, timestamptz, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION tenantry.append_events(text, timestamptz, text, jsonb) FROM PUBLIC;
"""


async def bootstrap_events(conn: AsyncConnection[Any], *, app_role: str) -> None:
    """Create the events tables and functions if missing; grant ``app_role`` publishing
    (through the function) and inbox writes.

    ``conn`` is an owner connection in autocommit mode, after the control plane's own
    bootstrap; serialised with it by the same advisory lock.
    """
    role = sql.Identifier(app_role)
    await run_bootstrap_script(
        conn,
        sql.SQL(EVENTS_DDL)  # a constant: no input in it
        + sql.SQL(
            "GRANT EXECUTE ON FUNCTION tenantry.publish_events(text, timestamptz, text, jsonb) "
            "TO {role};\n"
            "GRANT EXECUTE ON FUNCTION tenantry.append_events(text, timestamptz, text, jsonb) "
            "TO {role};\n"
            "GRANT SELECT (consumer, event_id, tenant_id), INSERT ON tenantry.inbox TO {role};\n"
        ).format(role=role),
    )
