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
