/* entity_cache--1.1.sql */

\echo Use "CREATE EXTENSION entity_cache" to load this file. \quit

-- The durable queue: one row per key (op 'k') or flush pattern (op 'f')
-- changed by a committed transaction.  The worker deletes rows only after
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
    op        "char" NOT NULL CHECK (op IN ('k', 'f')),
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

CREATE FUNCTION entity_cache._trigger_args(tgargs bytea, tgnargs int2)
RETURNS text[]
AS 'MODULE_PATHNAME', 'entity_cache_trigger_args'
LANGUAGE C STRICT IMMUTABLE;

-- What is watched, read from the triggers themselves: they are the
-- configuration, so pg_dump and replicas carry it with the table.
CREATE VIEW entity_cache.watched AS
SELECT t.tgrelid::regclass AS relid, a.key_template
FROM pg_catalog.pg_trigger t
CROSS JOIN LATERAL pg_catalog.unnest(entity_cache._trigger_args(t.tgargs, t.tgnargs))
     WITH ORDINALITY AS a(key_template, ord)
WHERE t.tgname = 'entity_cache_insert'
  AND t.tgfoid = 'entity_cache.capture()'::pg_catalog.regprocedure
ORDER BY t.tgrelid, a.ord;

GRANT SELECT ON entity_cache.watched TO PUBLIC;

CREATE FUNCTION entity_cache.watch(tbl regclass,
                                   key_template text DEFAULT 'entity:metadata:{code}')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    templates text[];
    args text;
BEGIN
    IF tbl IS NULL OR key_template IS NULL THEN
        RAISE EXCEPTION 'entity_cache.watch() needs a table and a key template'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM entity_cache._check_template(tbl, key_template);

    SELECT array_agg(w.key_template) INTO templates
    FROM entity_cache.watched w WHERE w.relid = tbl;
    IF key_template = ANY (templates) THEN
        RETURN;
    END IF;
    templates := coalesce(templates, '{}') || key_template;
    SELECT string_agg(quote_literal(t), ', ') INTO args FROM unnest(templates) t;

    PERFORM entity_cache.unwatch(tbl);
    -- One trigger per event: PostgreSQL allows transition tables only on
    -- single-event triggers.  ENABLE ALWAYS: replica-role sessions
    -- (pg_restore, logical apply, bulk loads) change rows too.
    EXECUTE format('CREATE TRIGGER entity_cache_insert AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS entity_cache_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION entity_cache.capture(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER entity_cache_update AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS entity_cache_old NEW TABLE AS entity_cache_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION entity_cache.capture(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER entity_cache_delete AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS entity_cache_old '
                   'FOR EACH STATEMENT EXECUTE FUNCTION entity_cache.capture(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER entity_cache_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION entity_cache.capture(%s)', tbl, args);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER entity_cache_insert, '
                   'ENABLE ALWAYS TRIGGER entity_cache_update, '
                   'ENABLE ALWAYS TRIGGER entity_cache_delete, '
                   'ENABLE ALWAYS TRIGGER entity_cache_truncate', tbl);
    -- partitions (issue 9): see _sync_partitions()
    PERFORM entity_cache._sync_partitions();
END
$$;

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
    -- partitions (issue 9): see _sync_partitions()
    PERFORM entity_cache._sync_partitions();
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
REVOKE ALL ON FUNCTION entity_cache.watch(regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.unwatch(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.invalidate(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.invalidate_key(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.flush_all() FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache._status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION entity_cache._status() TO pg_monitor;
GRANT SELECT ON entity_cache.status TO pg_monitor;

-- sync() only waits; anyone who can write may want read-your-writes.
GRANT EXECUTE ON FUNCTION entity_cache.sync(interval) TO PUBLIC;

-- Partitions (issue 9): a watched partitioned table is watched as a whole.
-- Its own statement triggers see writes made through it; a write made
-- directly to a partition fires only the partition's statement triggers,
-- so every partition (every level, present and future) carries capture
-- triggers named entity_cache_part_* with its watched ancestors'
-- arguments, copied verbatim.  An event trigger keeps them in step after
-- CREATE TABLE ... PARTITION OF, ATTACH and DETACH PARTITION; watch() and
-- unwatch() call _sync_partitions() themselves.
-- Statement triggers rather than row triggers on the parent (which
-- PostgreSQL clones to partitions): only statement triggers may have
-- transition tables on partitions, and they make a COPY one call.  A key
-- that both the parent's and a partition's triggers queue (TRUNCATE of
-- the parent truncates every partition) is queued once per transaction.
-- The `watched` view lists entity_cache_insert triggers: the parent only.
CREATE FUNCTION entity_cache._partition_triggers(tbl regclass, args text[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trg name;
    list text;
BEGIN
    FOR trg IN
        SELECT tgname FROM pg_trigger
        WHERE tgrelid = tbl
          AND tgname IN ('entity_cache_part_insert', 'entity_cache_part_update',
                         'entity_cache_part_delete', 'entity_cache_part_truncate')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trg, tbl);
    END LOOP;
    IF args IS NULL THEN
        RETURN;
    END IF;
    SELECT string_agg(quote_literal(a), ', ' ORDER BY o) INTO list
    FROM unnest(args) WITH ORDINALITY AS u(a, o);
    EXECUTE format('CREATE TRIGGER entity_cache_part_insert AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS entity_cache_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION entity_cache.capture(%s)', tbl, list);
    EXECUTE format('CREATE TRIGGER entity_cache_part_update AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS entity_cache_old NEW TABLE AS entity_cache_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION entity_cache.capture(%s)', tbl, list);
    EXECUTE format('CREATE TRIGGER entity_cache_part_delete AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS entity_cache_old '
                   'FOR EACH STATEMENT EXECUTE FUNCTION entity_cache.capture(%s)', tbl, list);
    EXECUTE format('CREATE TRIGGER entity_cache_part_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION entity_cache.capture(%s)', tbl, list);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER entity_cache_part_insert, '
                   'ENABLE ALWAYS TRIGGER entity_cache_part_update, '
                   'ENABLE ALWAYS TRIGGER entity_cache_part_delete, '
                   'ENABLE ALWAYS TRIGGER entity_cache_part_truncate', tbl);
END
$$;

-- Give every partition of a watched table the triggers it should have,
-- and take them from tables that are no longer partitions of one.  It
-- only brings the partitions in step with what the watched tables'
-- triggers say, which only those who may call capture() can set: so it
-- runs as the owner, and anyone may call it (watch() and unwatch() do,
-- with their caller's rights).
CREATE FUNCTION entity_cache._sync_partitions()
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    todo record;
    cur text[];
BEGIN
    FOR todo IN
        WITH roots AS (
            SELECT t.tgrelid AS root,
                   entity_cache._trigger_args(t.tgargs, t.tgnargs) AS args
            FROM pg_trigger t
            WHERE t.tgname = 'entity_cache_insert'
              AND t.tgfoid = 'entity_cache.capture()'::regprocedure
        ), wanted AS (
            SELECT p.relid, array_agg(a.arg ORDER BY p.level DESC, ro.root, a.ord) AS args
            FROM roots ro
            CROSS JOIN LATERAL pg_partition_tree(ro.root) p
            CROSS JOIN LATERAL unnest(ro.args) WITH ORDINALITY AS a(arg, ord)
            WHERE p.level > 0
            GROUP BY p.relid
        ), have AS (
            SELECT t.tgrelid AS relid,
                   entity_cache._trigger_args(t.tgargs, t.tgnargs) AS args
            FROM pg_trigger t
            WHERE t.tgname = 'entity_cache_part_insert'
              AND t.tgfoid = 'entity_cache.capture()'::regprocedure
        )
        SELECT coalesce(w.relid, h.relid)::regclass AS relid, w.args
        FROM wanted w FULL JOIN have h ON h.relid = w.relid
        WHERE w.args IS DISTINCT FROM h.args
        ORDER BY 1
    LOOP
        -- recheck: this may run nested in a DDL of the loop's own
        SELECT entity_cache._trigger_args(t.tgargs, t.tgnargs) INTO cur
        FROM pg_trigger t
        WHERE t.tgrelid = todo.relid AND t.tgname = 'entity_cache_part_insert';
        CONTINUE WHEN cur IS NOT DISTINCT FROM todo.args;
        PERFORM entity_cache._partition_triggers(todo.relid, todo.args);
    END LOOP;
END
$$;

-- SECURITY DEFINER: the owner of a table may create a partition of it
-- without the right to create triggers that call entity_cache.capture().
-- In C: it acts only on PARTITION OF, ATTACH and DETACH, not on the
-- ALTER TABLE ... ENABLE TRIGGER that pg_restore runs after each trigger.
CREATE FUNCTION entity_cache._on_ddl()
RETURNS event_trigger
AS 'MODULE_PATHNAME', 'entity_cache_on_ddl'
LANGUAGE C
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION entity_cache._partition_triggers(regclass, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache._on_ddl() FROM PUBLIC;

CREATE EVENT TRIGGER entity_cache_partitions ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION entity_cache._on_ddl();

DO $$
BEGIN
    IF pg_catalog.to_regclass('app.entity') IS NOT NULL THEN
        PERFORM entity_cache.watch('app.entity');
    END IF;
END
$$;
