/* entity_cache--1.0--1.1.sql */

\echo Use "ALTER EXTENSION entity_cache UPDATE TO '1.1'" to load this file. \quit

-- Every change to the objects of 1.0 that entity_cache--1.1.sql makes is
-- made here too, so that an updated installation has exactly the objects
-- of a fresh one (t/005_upgrade.pl compares them).  Queued rows stay.

-- status: which database is served and why not, the Redis node and TLS,
-- skipped notifications, failed refreshes, pending redeletes, the cluster.
DROP VIEW entity_cache.status;
DROP FUNCTION entity_cache._status();
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
REVOKE ALL ON FUNCTION entity_cache._status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION entity_cache._status() TO pg_monitor;
GRANT SELECT ON entity_cache.status TO pg_monitor;

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

-- watch() and unwatch() bring the partitions in step (issue 9)
CREATE OR REPLACE FUNCTION entity_cache.watch(tbl regclass,
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

CREATE OR REPLACE FUNCTION entity_cache.unwatch(tbl regclass)
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

-- partitions watched before the update get their triggers now
SELECT entity_cache._sync_partitions();
