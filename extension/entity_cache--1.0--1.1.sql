/* entity_cache--1.0--1.1.sql */

\echo Use "ALTER EXTENSION entity_cache UPDATE TO '1.1'" to load this file. \quit

-- Every change from 1.0 to 1.1.  The Makefile builds entity_cache--1.1.sql
-- from entity_cache--1.0.sql followed by this file, so a fresh 1.1 and an
-- updated installation run the same statements (t/005_upgrade.pl compares
-- their objects).  Queued rows stay.

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

-- ---------------------------------------------------------------------
-- Consistency (issue 13): op 'w', value functions, watch() with a value
-- function, the watched view with its column, warm(), verify().
-- ---------------------------------------------------------------------
ALTER TABLE entity_cache.queue DROP CONSTRAINT queue_op_check,
    ADD CONSTRAINT queue_op_check CHECK (op IN ('k', 'f', 'w'));
DROP VIEW entity_cache.watched;
DROP FUNCTION entity_cache.watch(regclass, text);

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

-- The four capture triggers named <prefix>_insert ... _truncate on tbl,
-- with args as their arguments; args NULL removes them.  The one place that
-- creates capture triggers: watch() and unwatch() for a watched table
-- (prefix entity_cache), _sync_partitions() for its partitions
-- (entity_cache_part).  One trigger per event: PostgreSQL allows transition
-- tables only on single-event triggers.  ENABLE ALWAYS: replica-role
-- sessions (pg_restore, logical apply, bulk loads) change rows too.  It
-- runs with its caller's rights: creating a trigger needs the table's
-- ownership and EXECUTE on capture(), so PUBLIC may call it.
CREATE FUNCTION entity_cache._install_triggers(tbl regclass, prefix text, args text[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ev record;
    trg name;
    list text;
BEGIN
    SELECT string_agg(quote_literal(a), ', ' ORDER BY o) INTO list
    FROM unnest(args) WITH ORDINALITY AS u(a, o);
    FOR ev IN
        SELECT * FROM (VALUES
            ('insert', 'INSERT', 'REFERENCING NEW TABLE AS entity_cache_new'),
            ('update', 'UPDATE', 'REFERENCING OLD TABLE AS entity_cache_old NEW TABLE AS entity_cache_new'),
            ('delete', 'DELETE', 'REFERENCING OLD TABLE AS entity_cache_old'),
            ('truncate', 'TRUNCATE', '')) AS e(suffix, event, transition)
    LOOP
        trg := prefix || '_' || ev.suffix;
        IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = tbl AND tgname = trg) THEN
            EXECUTE format('DROP TRIGGER %I ON %s', trg, tbl);
        END IF;
        CONTINUE WHEN args IS NULL;
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION entity_cache.capture(%s)',
                       trg, ev.event, tbl, ev.transition, list);
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', tbl, trg);
    END LOOP;
END
$$;

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
    PERFORM entity_cache._install_triggers(tbl, 'entity_cache', args);
    -- partitions (issue 9): see _sync_partitions()
    PERFORM entity_cache._sync_partitions();
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
REVOKE ALL ON FUNCTION entity_cache.watch(regclass, text, regprocedure) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.warm(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.verify(regclass, boolean) FROM PUBLIC;
-- ---------------------------------------------------------------------
-- end of Consistency (issue 13)
-- ---------------------------------------------------------------------


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
            SELECT t.tgrelid AS root, array_agg(w.arg ORDER BY w.ord) AS args
            FROM pg_trigger t
            CROSS JOIN LATERAL entity_cache._watched_args(t.tgname, t.tgfoid, t.tgargs, t.tgnargs)
                 WITH ORDINALITY AS w(key_template, value, arg, ord)
            GROUP BY t.tgrelid
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
        PERFORM entity_cache._install_triggers(todo.relid, 'entity_cache_part', todo.args);
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

REVOKE ALL ON FUNCTION entity_cache._on_ddl() FROM PUBLIC;

CREATE EVENT TRIGGER entity_cache_partitions ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION entity_cache._on_ddl();

-- unwatch() brings the partitions in step (issue 9); watch() is replaced
-- above, with its value function (issue 13)
CREATE OR REPLACE FUNCTION entity_cache.unwatch(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'entity_cache.unwatch() needs a table'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM entity_cache._install_triggers(tbl, 'entity_cache', NULL);
    -- partitions (issue 9): see _sync_partitions()
    PERFORM entity_cache._sync_partitions();
END
$$;

-- partitions watched before the update get their triggers now
SELECT entity_cache._sync_partitions();
