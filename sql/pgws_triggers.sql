-- pgws row-change notifications: a trigger function that NOTIFYs `<tenant>[/<topic>],<json>` when a
-- row is inserted, updated or deleted, so clients learn of changes with no application code.
--
-- Install:  psql "$DATABASE_URL" -f sql/pgws_triggers.sql
-- Attach:   CREATE TRIGGER orders_pgws
--             AFTER INSERT OR UPDATE OR DELETE ON orders
--             FOR EACH ROW EXECUTE FUNCTION pgws_notify_row('tenant_id');
--
-- Arguments (all text): tenant column (required); channel (default 'pgwebsocket'); topic (default none);
-- key column for oversized rows (default 'id').
--
-- Message body: {"table": "<table>", "op": "INSERT|UPDATE|DELETE", "row": {…the row…}}
-- (for DELETE, the deleted row). Rows whose tenant column is NULL are not announced.
--
-- NOTIFY payloads must stay under 8,000 bytes. When a row would not fit, the body is replaced by
-- {"table": …, "op": …, "truncated": true, "key": <the key column's value>} so clients can fetch the row
-- themselves; nothing is silently lost, and the triggering statement never fails because of it.

CREATE OR REPLACE FUNCTION pgws_notify_row() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    tenant_column text := TG_ARGV[0];
    channel text := coalesce(nullif(TG_ARGV[1], ''), 'pgwebsocket');
    topic text := nullif(TG_ARGV[2], '');
    key_column text := coalesce(nullif(TG_ARGV[3], ''), 'id');
    row_json jsonb;
    address text;
    payload text;
BEGIN
    IF tenant_column IS NULL THEN
        RAISE EXCEPTION 'pgws_notify_row needs the tenant column name as its first argument';
    END IF;
    row_json := to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END);
    address := row_json ->> tenant_column;
    IF address IS NULL THEN
        RETURN NULL;
    END IF;
    IF topic IS NOT NULL THEN
        address := address || '/' || topic;
    END IF;
    payload := address || ',' || jsonb_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'row', row_json)::text;
    IF octet_length(payload) >= 8000 THEN
        payload := address || ',' || jsonb_build_object(
            'table', TG_TABLE_NAME, 'op', TG_OP, 'truncated', true, 'key', row_json -> key_column)::text;
    END IF;
    PERFORM pg_notify(channel, payload);
    RETURN NULL;
END
$$;
