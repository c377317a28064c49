-- CREATE EXTENSION watches app.entity when the table already exists.
-- (the path is relative to the top of the tree, where make installcheck runs)
\i scripts/app_entity.sql
CREATE EXTENSION entity_cache;

SELECT * FROM entity_cache.watched;

-- four statement-level triggers, ENABLE ALWAYS ('A') so that replica-role
-- sessions are captured too
SELECT tgname, tgenabled, tgtype
FROM pg_trigger WHERE tgrelid = 'app.entity'::regclass ORDER BY tgname;

-- the queue is empty and owned by the extension; it has no index (every
-- writer inserts into it) and logs whole rows if it is ever decoded
SELECT count(*) FROM entity_cache.queue;
SELECT relhasindex, relreplident FROM pg_class WHERE oid = 'entity_cache.queue'::regclass;
SELECT classid::regclass, objid::regclass
FROM pg_depend
WHERE refobjid = (SELECT oid FROM pg_extension WHERE extname = 'entity_cache')
  AND classid = 'pg_class'::regclass
ORDER BY objid::regclass::text;

-- a helper for the suites: show what was queued, then clear it
CREATE FUNCTION take_queue(OUT op "char", OUT key text, OUT vals text[])
RETURNS SETOF record LANGUAGE sql AS $$
    DELETE FROM entity_cache.queue RETURNING op, key, vals
$$;
CREATE VIEW queued AS SELECT op, key, vals FROM entity_cache.queue ORDER BY queued_at, ctid;
