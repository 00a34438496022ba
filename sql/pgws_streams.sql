-- pgws durable streams, schema version 1. Installed by `pgws schema install` (idempotent: run it again
-- after an upgrade; it changes nothing that is already in place).
--
-- One stream per tenant: a head row (`pgws_stream`) holding the stream's epoch and its last offset,
-- and the messages (`pgws_message`) at dense offsets 1, 2, 3, ... within the epoch. `pgws_publish`
-- takes the head row's lock, bumps the offset and inserts the message; the lock is held until the
-- publishing transaction ends, so a tenant's offsets are handed out in commit order: a reader that
-- takes "offset > last seen" never skips a row that commits late. The cost: one tenant's publishing
-- transactions commit one at a time (publish last, just before COMMIT, to hold the lock briefly);
-- other tenants never wait. A transaction that publishes to several tenants should do so in a fixed
-- order (say, by name), or two such transactions can deadlock on each other's head rows. See README
-- "Durable streams".

CREATE TABLE IF NOT EXISTS pgws_schema (
    version integer NOT NULL
);

CREATE TABLE IF NOT EXISTS pgws_stream (
    tenant      text PRIMARY KEY,
    -- Changes only when the stream is reset (its head row deleted and made again): clients holding a
    -- position of another epoch cannot recover and reload.
    epoch       text NOT NULL,
    top_offset  bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- When the doorbell last rang for this stream (see pgws.doorbell_ms below).
    rang_at     timestamptz NOT NULL DEFAULT '-infinity'
) WITH (fillfactor = 50);

CREATE TABLE IF NOT EXISTS pgws_message (
    tenant      text NOT NULL,
    "offset"    bigint NOT NULL,
    epoch       text NOT NULL,
    topic       text,
    body        jsonb NOT NULL,
    -- When it was stored (not when its transaction began): retention and recovery age go by it.
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Serves "a tenant's stream after position P"; a reset stream's new epoch counts from 1 again.
    PRIMARY KEY (tenant, epoch, "offset")
);

-- Serves retention by age.
CREATE INDEX IF NOT EXISTS pgws_message_created_at ON pgws_message (created_at);

-- Publishes one message to `p_tenant`'s stream (on `p_topic`, or tenant-wide when it is null) and
-- returns its offset. Call it inside your own transaction: the message is delivered if and only if
-- that transaction commits. Rings the doorbell (`NOTIFY pgws_stream, '<tenant>'`; Postgres sends one
-- per tenant per transaction, however many messages it published).
--
-- Every committing transaction that NOTIFYs takes a cluster-wide lock, so at high rates of small
-- transactions the doorbell costs more than the message. With `SET pgws.doorbell_ms = 5` (per
-- session, role or database) a stream's doorbell rings at most once per 5 ms; the pgws hosts, run
-- with `--stream-doorbell-ms 5`, read a rung stream again 5 ms after each read that found messages,
-- which picks up those whose doorbell stayed silent (a long transaction committing later than that
-- waits for the safety poll, `--stream-poll-ms`). That helps busy streams; when many tenants each
-- publish a little, `SET pgws.doorbell_ms = -1` rings no doorbell at all and the hosts find new
-- messages by polling the heads of the tenants they serve (`--stream-poll-ms 10`, say).
CREATE OR REPLACE FUNCTION pgws_publish(p_tenant text, p_topic text, p_body jsonb)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_offset bigint;
    v_epoch text;
    v_max integer := coalesce(nullif(current_setting('pgws.max_body', true), '')::integer, 1048576);
    v_quiet integer := coalesce(nullif(current_setting('pgws.doorbell_ms', true), '')::integer, 0);
    v_now timestamptz := clock_timestamp();
    v_ring boolean;
BEGIN
    IF p_tenant IS NULL OR p_tenant !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$' THEN
        RAISE EXCEPTION 'pgws_publish: invalid tenant name %', p_tenant
            USING HINT = '1-64 of A-Z a-z 0-9 _ - ., starting with a letter or digit';
    END IF;
    IF p_topic IS NOT NULL AND (p_topic !~ '^[A-Za-z0-9_.:/-]{1,128}$' OR p_topic ~ '(^/|//|/$)') THEN
        RAISE EXCEPTION 'pgws_publish: invalid topic name %', p_topic
            USING HINT = '1-128 of A-Z a-z 0-9 _ - . : /, no empty / segment';
    END IF;
    IF p_body IS NULL THEN
        RAISE EXCEPTION 'pgws_publish: the body is null';
    END IF;
    IF octet_length(p_body::text) > v_max THEN
        RAISE EXCEPTION 'pgws_publish: body of % bytes is over the limit of % (SET pgws.max_body)',
            octet_length(p_body::text), v_max;
    END IF;
    INSERT INTO pgws_stream AS s (tenant, epoch, top_offset, rang_at)
    VALUES (p_tenant, substr(md5(random()::text || v_now::text), 1, 12), 1, v_now)
    ON CONFLICT (tenant) DO UPDATE SET
        top_offset = s.top_offset + 1,
        updated_at = now(),
        rang_at = CASE WHEN s.rang_at <= v_now - v_quiet * interval '1 millisecond'
                       THEN v_now ELSE s.rang_at END
    RETURNING s.top_offset, s.epoch, s.rang_at = v_now INTO v_offset, v_epoch, v_ring;
    INSERT INTO pgws_message (tenant, "offset", epoch, topic, body)
    VALUES (p_tenant, v_offset, v_epoch, p_topic, p_body);
    IF v_ring AND v_quiet >= 0 THEN
        PERFORM pg_notify('pgws_stream', p_tenant);
    END IF;
    RETURN v_offset;
END
$$;

-- The two-argument form: a tenant-wide message.
CREATE OR REPLACE FUNCTION pgws_publish(p_tenant text, p_body jsonb)
RETURNS bigint
LANGUAGE sql
AS $$ SELECT pgws_publish(p_tenant, NULL, p_body) $$;

INSERT INTO pgws_schema (version) SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM pgws_schema);
UPDATE pgws_schema SET version = 1 WHERE version < 1;
