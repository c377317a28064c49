-- invalidate(), invalidate_key(), flush_all(), sync(), status.
SET entity_cache.notify = off;
INSERT INTO app.entity (code, label) VALUES ('api1', 'x');
SELECT count(*) FROM take_queue();

-- invalidate(code): every template of app.entity, rendered from the row
SELECT entity_cache.watch('app.entity', 'entity:{entity_type}:{code}');
SELECT entity_cache.invalidate('api1');
SELECT * FROM queued;
SELECT count(*) FROM take_queue();
-- no such row: templates that need only the code are still rendered
SELECT entity_cache.invalidate('ghost');
SELECT * FROM queued;
SELECT count(*) FROM take_queue();
SELECT entity_cache.invalidate(NULL);

-- invalidate_key: any key at all
SELECT entity_cache.invalidate_key('session:42');
SELECT entity_cache.invalidate_key(E'odd key\n"*"');
SELECT * FROM queued;
SELECT count(*) FROM take_queue();
SELECT entity_cache.invalidate_key('');
SELECT entity_cache.invalidate_key(NULL);

-- flush_all: one flush per watched template
SELECT entity_cache.flush_all();
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- not in a read-only transaction
BEGIN READ ONLY;
SELECT entity_cache.invalidate_key('ro');
ROLLBACK;

-- sync: true at once on an empty queue; false while rows wait, at once:
-- no worker serves this database (entity_cache.database is 'postgres'),
-- so there is nothing to wait for; rows of the calling transaction,
-- which the worker cannot see yet, are not waited for
SELECT entity_cache.sync('1 s');
SELECT entity_cache.invalidate_key('pending');
SELECT clock_timestamp() AS before_sync \gset
SELECT entity_cache.sync('1 h');
SELECT clock_timestamp() - :'before_sync' < interval '1 min' AS returned_at_once;
SELECT count(*) FROM take_queue();
BEGIN;
SELECT entity_cache.invalidate_key('mine');
SELECT entity_cache.sync('1 s');
ROLLBACK;
SELECT entity_cache.sync('-1 s');
SELECT entity_cache.sync(NULL);
-- a very long timeout is a long timeout, not a negative one (its
-- microseconds overflowed int64) nor a deadline in the past
SELECT entity_cache.sync('110000000 days');
SELECT entity_cache.sync('1000000 years');
SELECT entity_cache.sync('1 day -1000000 years');

-- status: one row; the worker runs for another database, so here it
-- shows none, and says why
SELECT entity_cache.invalidate_key('one');
SELECT worker_pid, redis_connected, queue_depth,
       oldest_pending_age >= '0'::interval AS has_age, database, worker_note,
       refresh_failed
FROM entity_cache.status;
SELECT count(*) FROM take_queue();
SELECT queue_depth, oldest_pending_age FROM entity_cache.status;

SELECT entity_cache.unwatch('app.entity');
SELECT entity_cache.invalidate('api1');
SELECT entity_cache.watch('app.entity');
SELECT * FROM entity_cache.watched WHERE relid = 'app.entity'::regclass;
