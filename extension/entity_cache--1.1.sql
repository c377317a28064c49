/* entity_cache--1.1.sql */

\echo Use "CREATE EXTENSION entity_cache" to load this file. \quit

-- The durable queue: one row per key (op 'k') or flush pattern (op 'f')
-- changed by a committed transaction, or key to write from its row in
-- either mode (op 'w', queued by warm()).  The worker deletes rows only after
-- Redis acknowledged them.  relid/template/vals let it find the row again
-- in refresh mode.  The C code writes rows column by column: keep this
-- shape in step with extension/entity_cache.h.
--
-- No id, no index: every writer of a watched table inserts here, and a
-- sequence and a primary key were two pages every writer had to lock in
-- turn.  Order does not matter (a key is deleted, or rewritten from the
-- row as it is when the batch is applied), so the worker takes rows in
-- physical order.  REPLICA IDENTITY FULL keeps its deletes legal if a
-- publication FOR ALL TABLES includes the queue.
CREATE TABLE entity_cache.queue (
    op        "char" NOT NULL CHECK (op IN ('k', 'f', 'w')),
    key       text NOT NULL,
    relid     oid,
    template  text,
    vals      text[],
    queued_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
-- rows are consumed within milliseconds; vacuum the churn promptly
ALTER TABLE entity_cache.queue SET (autovacuum_vacuum_scale_factor = 0.0,
                                    autovacuum_vacuum_threshold = 1000,
                                    autovacuum_vacuum_insert_scale_factor = 0.0,
                                    autovacuum_vacuum_insert_threshold = 10000);
ALTER TABLE entity_cache.queue REPLICA IDENTITY FULL;

REVOKE ALL ON entity_cache.queue FROM PUBLIC;
GRANT USAGE ON SCHEMA entity_cache TO PUBLIC;

CREATE FUNCTION entity_cache.capture()
RETURNS trigger
AS 'MODULE_PATHNAME', 'entity_cache_capture'
LANGUAGE C;

CREATE FUNCTION entity_cache._check_template(tbl regclass, key_template text)
RETURNS void
AS 'MODULE_PATHNAME', 'entity_cache_check_template'
LANGUAGE C STRICT;

-- ---------------------------------------------------------------------
-- Consistency (issue 13): value functions, watch() with a value function,
-- the watched view with its column, warm(), verify().
-- ---------------------------------------------------------------------

-- A capture trigger argument is "<template>" or "<template>\nvalue=<fn
-- signature>": a template has no line break, and a signature (not an OID)
-- survives pg_dump and pg_restore.  _watch_arg() writes that encoding,
-- _watched_args() reads it (both in C, one implementation each).
CREATE FUNCTION entity_cache._watch_arg(tbl regclass, key_template text,
                                        value regprocedure)
RETURNS text
AS 'MODULE_PATHNAME', 'entity_cache_watch_arg'
LANGUAGE C;

CREATE FUNCTION entity_cache._watched_args(tgname name, tgfoid oid,
                                           tgargs bytea, tgnargs int2)
RETURNS TABLE (key_template text, value text, arg text)
AS 'MODULE_PATHNAME', 'entity_cache_watched_args'
LANGUAGE C STABLE;

-- What is watched, read from the triggers themselves: they are the
-- configuration, so pg_dump and replicas carry it with the table.  value
-- is the value function's signature, NULL for row_to_json.
CREATE VIEW entity_cache.watched AS
SELECT t.tgrelid::regclass AS relid, a.key_template, a.value
FROM pg_catalog.pg_trigger t
CROSS JOIN LATERAL entity_cache._watched_args(t.tgname, t.tgfoid, t.tgargs, t.tgnargs)
     WITH ORDINALITY AS a(key_template, value, arg, ord)
ORDER BY t.tgrelid, a.ord;

GRANT SELECT ON entity_cache.watched TO PUBLIC;

CREATE FUNCTION entity_cache.watch(tbl regclass,
                                   key_template text DEFAULT 'entity:metadata:{code}',
                                   value regprocedure DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    arg text;
    args text[];
    list text;
BEGIN
    IF tbl IS NULL OR watch.key_template IS NULL THEN
        RAISE EXCEPTION 'entity_cache.watch() needs a table and a key template'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    arg := entity_cache._watch_arg(tbl, watch.key_template, watch.value);

    -- the table's other templates keep their arguments as they are
    SELECT array_agg(a.arg ORDER BY a.ord) INTO args
    FROM pg_catalog.pg_trigger t
    CROSS JOIN LATERAL entity_cache._watched_args(t.tgname, t.tgfoid, t.tgargs, t.tgnargs)
         WITH ORDINALITY AS a(key_template, value, arg, ord)
    WHERE t.tgrelid = tbl;
    IF arg = ANY (args) THEN
        RETURN;
    END IF;
    SELECT array_agg(a) INTO args FROM unnest(args) a
    WHERE a <> ALL (SELECT w.arg FROM pg_catalog.pg_trigger t
                    CROSS JOIN LATERAL entity_cache._watched_args(t.tgname, t.tgfoid, t.tgargs, t.tgnargs) w
                    WHERE t.tgrelid = tbl AND w.key_template = watch.key_template);
    args := coalesce(args, '{}') || arg;
    SELECT string_agg(quote_literal(a), ', ') INTO list FROM unnest(args) a;

    PERFORM entity_cache.unwatch(tbl);
    -- One trigger per event: PostgreSQL allows transition tables only on
    -- single-event triggers.  ENABLE ALWAYS: replica-role sessions
    -- (pg_restore, logical apply, bulk loads) change rows too.
    EXECUTE format('CREATE TRIGGER entity_cache_insert AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS entity_cache_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION entity_cache.capture(%s)', tbl, list);
    EXECUTE format('CREATE TRIGGER entity_cache_update AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS entity_cache_old NEW TABLE AS entity_cache_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION entity_cache.capture(%s)', tbl, list);
    EXECUTE format('CREATE TRIGGER entity_cache_delete AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS entity_cache_old '
                   'FOR EACH STATEMENT EXECUTE FUNCTION entity_cache.capture(%s)', tbl, list);
    EXECUTE format('CREATE TRIGGER entity_cache_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION entity_cache.capture(%s)', tbl, list);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER entity_cache_insert, '
                   'ENABLE ALWAYS TRIGGER entity_cache_update, '
                   'ENABLE ALWAYS TRIGGER entity_cache_delete, '
                   'ENABLE ALWAYS TRIGGER entity_cache_truncate', tbl);
END
$$;

-- warm(): queue every row of the table for writing (op 'w': SET from the
-- row with the value function and the ttl, in either mode).
CREATE FUNCTION entity_cache.warm(tbl regclass DEFAULT 'app.entity'::text::regclass)
RETURNS bigint
AS 'MODULE_PATHNAME', 'entity_cache_warm'
LANGUAGE C;

-- verify(): compare what the rows render with Redis, in batches.
CREATE FUNCTION entity_cache.verify(tbl regclass DEFAULT 'app.entity'::text::regclass,
                                    repair boolean DEFAULT false)
RETURNS TABLE (key text, problem text)
AS 'MODULE_PATHNAME', 'entity_cache_verify'
LANGUAGE C;

REVOKE ALL ON FUNCTION entity_cache._watch_arg(regclass, text, regprocedure) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.warm(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.verify(regclass, boolean) FROM PUBLIC;
-- ---------------------------------------------------------------------
-- end of Consistency (issue 13)
-- ---------------------------------------------------------------------

CREATE FUNCTION entity_cache.unwatch(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trg name;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'entity_cache.unwatch() needs a table'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    FOR trg IN
        SELECT tgname FROM pg_trigger
        WHERE tgrelid = tbl
          AND tgname IN ('entity_cache_insert', 'entity_cache_update',
                         'entity_cache_delete', 'entity_cache_truncate')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trg, tbl);
    END LOOP;
END
$$;

CREATE FUNCTION entity_cache.invalidate(code text)
RETURNS integer
AS 'MODULE_PATHNAME', 'entity_cache_invalidate'
LANGUAGE C;

CREATE FUNCTION entity_cache.invalidate_key(key text)
RETURNS void
AS 'MODULE_PATHNAME', 'entity_cache_invalidate_key'
LANGUAGE C;

CREATE FUNCTION entity_cache.flush_all()
RETURNS integer
AS 'MODULE_PATHNAME', 'entity_cache_flush_all'
LANGUAGE C;

CREATE FUNCTION entity_cache.sync(timeout interval DEFAULT '5 s')
RETURNS boolean
AS 'MODULE_PATHNAME', 'entity_cache_sync'
LANGUAGE C;

CREATE FUNCTION entity_cache._status(
    OUT worker_pid integer,
    OUT redis_connected boolean,
    OUT queue_depth bigint,
    OUT oldest_pending_age interval,
    OUT applied_total bigint,
    OUT errors_total bigint,
    OUT last_error text,
    OUT last_error_at timestamptz,
    OUT database text,
    OUT worker_note text,
    OUT redis_node text,
    OUT redis_tls boolean,
    OUT notify_skipped bigint,
    OUT refresh_failed bigint,
    OUT redelete_pending bigint,
    OUT cluster_nodes integer,
    OUT cluster_slots_loaded_at timestamptz,
    OUT cluster_redirections bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'entity_cache_status'
LANGUAGE C
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;

CREATE VIEW entity_cache.status AS SELECT * FROM entity_cache._status();

-- Capture and queueing functions write the queue; nobody but the owner
-- and those granted may call them.  The trigger fires for every writer
-- whatever its rights: EXECUTE is checked when a trigger is created.
REVOKE ALL ON FUNCTION entity_cache.capture() FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache._check_template(regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.watch(regclass, text, regprocedure) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.unwatch(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.invalidate(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.invalidate_key(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.flush_all() FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache._status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION entity_cache._status() TO pg_monitor;
GRANT SELECT ON entity_cache.status TO pg_monitor;

-- sync() only waits; anyone who can write may want read-your-writes.
GRANT EXECUTE ON FUNCTION entity_cache.sync(interval) TO PUBLIC;

DO $$
BEGIN
    IF pg_catalog.to_regclass('app.entity') IS NOT NULL THEN
        PERFORM entity_cache.watch('app.entity');
    END IF;
END
$$;
