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

-- ---------------------------------------------------------------------
-- Consistency (issue 13): op 'w', value functions, watch() with a value
-- function, the watched view with its column, warm(), verify().
-- ---------------------------------------------------------------------
ALTER TABLE entity_cache.queue DROP CONSTRAINT queue_op_check,
    ADD CONSTRAINT queue_op_check CHECK (op IN ('k', 'f', 'w'));
DROP VIEW entity_cache.watched;
DROP FUNCTION entity_cache._trigger_args(bytea, int2);
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
REVOKE ALL ON FUNCTION entity_cache.watch(regclass, text, regprocedure) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.warm(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION entity_cache.verify(regclass, boolean) FROM PUBLIC;
-- ---------------------------------------------------------------------
-- end of Consistency (issue 13)
-- ---------------------------------------------------------------------
