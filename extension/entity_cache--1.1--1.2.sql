/* entity_cache--1.1--1.2.sql */

\echo Use "ALTER EXTENSION entity_cache UPDATE TO '1.2'" to load this file. \quit

-- ---------------------------------------------------------------------
-- Foreign-table partitions
-- ---------------------------------------------------------------------
-- A foreign table cannot have triggers with transition tables, so
-- _sync_partitions() failed on a foreign-table partition of a watched
-- table, and with it every later CREATE TABLE ... PARTITION OF, ATTACH,
-- DETACH, watch() and unwatch() of any watched table.  It now leaves
-- foreign tables out: a write made through the watched parent is captured
-- by the parent's triggers as before; a write made directly to the foreign
-- table (or on its server) is not (README, "Guarantees").
CREATE OR REPLACE FUNCTION entity_cache._sync_partitions()
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
            JOIN pg_class c ON c.oid = p.relid
            CROSS JOIN LATERAL unnest(ro.args) WITH ORDINALITY AS a(arg, ord)
            WHERE p.level > 0 AND c.relkind <> 'f'
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

-- ---------------------------------------------------------------------
-- watch() reads the table's triggers once
-- ---------------------------------------------------------------------
-- Same behaviour as 1.1: an argument already there is a no-op; a template
-- already watched has its value function replaced; the others are kept in
-- their order.
CREATE OR REPLACE FUNCTION entity_cache.watch(tbl regclass,
                                              key_template text DEFAULT 'entity:metadata:{code}',
                                              value regprocedure DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_arg text;
    args text[];
    present boolean;
BEGIN
    IF tbl IS NULL OR watch.key_template IS NULL THEN
        RAISE EXCEPTION 'entity_cache.watch() needs a table and a key template'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    new_arg := entity_cache._watch_arg(tbl, watch.key_template, watch.value);

    -- the table's other templates keep their arguments as they are
    SELECT coalesce(bool_or(a.arg = new_arg), false),
           array_agg(a.arg ORDER BY a.ord) FILTER (WHERE a.key_template <> watch.key_template)
    INTO present, args
    FROM pg_catalog.pg_trigger t
    CROSS JOIN LATERAL entity_cache._watched_args(t.tgname, t.tgfoid, t.tgargs, t.tgnargs)
         WITH ORDINALITY AS a(key_template, value, arg, ord)
    WHERE t.tgrelid = tbl;
    IF present THEN
        RETURN;
    END IF;
    args := coalesce(args, '{}') || new_arg;
    PERFORM entity_cache._install_triggers(tbl, 'entity_cache', args);
    -- partitions (issue 9): see _sync_partitions()
    PERFORM entity_cache._sync_partitions();
END
$$;

-- ---------------------------------------------------------------------
-- _check_template(): unused since 1.1 (watch() checks through _watch_arg())
-- ---------------------------------------------------------------------
DROP FUNCTION entity_cache._check_template(regclass, text);
