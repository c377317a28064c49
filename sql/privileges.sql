-- Writers need no rights on the queue; nobody else may touch it.
SET entity_cache.notify = off;
CREATE ROLE ec_writer LOGIN;
CREATE ROLE ec_admin LOGIN;
GRANT USAGE ON SCHEMA app TO ec_writer, ec_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON app.entity TO ec_writer;
GRANT EXECUTE ON FUNCTION entity_cache.invalidate_key(text), entity_cache.flush_all()
    TO ec_admin;

SET ROLE ec_writer;
INSERT INTO app.entity (code) VALUES ('p1');
UPDATE app.entity SET label = 'w' WHERE code = 'p1';
DELETE FROM app.entity WHERE code = 'p1';
SELECT * FROM entity_cache.queue;
INSERT INTO entity_cache.queue (op, key) VALUES ('k', 'forged');
DELETE FROM entity_cache.queue;
SELECT entity_cache.flush_all();
SELECT entity_cache.invalidate_key('x');
SELECT entity_cache.invalidate('p1');
SELECT entity_cache.watch('app.entity', 'y:{code}');
SELECT entity_cache.unwatch('app.entity');
SELECT * FROM entity_cache.status;
SHOW entity_cache.redis_password;
SHOW entity_cache.redis_url;
SELECT count(*) FROM pg_settings WHERE name IN ('entity_cache.redis_password', 'entity_cache.redis_url');
SELECT entity_cache.sync('10 ms');
RESET ROLE;

-- the writer's changes were captured
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- a granted role may queue by hand; monitoring roles may read status
SET ROLE ec_admin;
SELECT entity_cache.invalidate_key('granted');
SELECT entity_cache.flush_all();
RESET ROLE;
GRANT pg_monitor TO ec_writer;
ALTER SYSTEM SET entity_cache.redis_password = 'hunter2';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://app:hunter2@127.0.0.1:9/0';
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
SHOW entity_cache.redis_password;
SHOW entity_cache.redis_url;
SET ROLE ec_writer;
SELECT queue_depth FROM entity_cache.status;
-- pg_monitor brings pg_read_all_settings, which GUC_SUPERUSER_ONLY lets
-- through: the password stays masked
SHOW entity_cache.redis_password;
SHOW entity_cache.redis_url;
SELECT name, setting FROM pg_settings
WHERE name IN ('entity_cache.redis_password', 'entity_cache.redis_url') ORDER BY 1;
SELECT current_setting('entity_cache.redis_password');
RESET ROLE;
-- every URL form masks its password, and so do the sentinels' password and
-- the TLS key path, for everyone but superusers
ALTER SYSTEM SET entity_cache.redis_url = 'rediss-sentinel://app:hunter2@127.0.0.1:9,[::1]:9/0?master=mymaster';
ALTER SYSTEM SET entity_cache.redis_sentinel_password = 'sentinel-secret';
ALTER SYSTEM SET entity_cache.redis_tls_key_file = '/secret/client.key';
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
SHOW entity_cache.redis_url;
SHOW entity_cache.redis_sentinel_password;
SHOW entity_cache.redis_tls_key_file;
SET ROLE ec_writer;
SHOW entity_cache.redis_url;
SHOW entity_cache.redis_sentinel_password;
SHOW entity_cache.redis_tls_key_file;
RESET ROLE;
ALTER SYSTEM RESET entity_cache.redis_password;
ALTER SYSTEM RESET entity_cache.redis_url;
ALTER SYSTEM RESET entity_cache.redis_sentinel_password;
ALTER SYSTEM RESET entity_cache.redis_tls_key_file;
SELECT pg_reload_conf();
SELECT count(*) FROM take_queue();

-- a hostile search_path does not reach into the extension's functions:
-- watch() pins its own path, capture and the queue code resolve nothing
-- by name through it
CREATE SCHEMA evil;
CREATE FUNCTION evil.quote_literal(text) RETURNS text LANGUAGE sql
    AS $$ SELECT '''hijacked:{code}''' $$;
CREATE FUNCTION evil.array_agg(text) RETURNS text[] LANGUAGE sql
    AS $$ SELECT ARRAY['hijacked'] $$;
CREATE TABLE evil.queue (x int);
SET search_path = evil, public;
SELECT entity_cache.watch('app.entity', 'evil:{code}');
INSERT INTO app.entity (code) VALUES ('p2');
RESET search_path;
SELECT * FROM queued;
SELECT count(*) FROM take_queue();
SELECT count(*) FROM evil.queue;
SELECT entity_cache.unwatch('app.entity');
SELECT entity_cache.watch('app.entity');

DROP SCHEMA evil CASCADE;
REVOKE ALL ON app.entity FROM ec_writer;
REVOKE ALL ON SCHEMA app FROM ec_writer, ec_admin;
REVOKE ALL ON FUNCTION entity_cache.invalidate_key(text), entity_cache.flush_all() FROM ec_admin;
DROP ROLE ec_writer;
DROP ROLE ec_admin;
