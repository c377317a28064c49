-- Bad settings are refused with a message that says what is wrong.
ALTER SYSTEM SET entity_cache.redis_url = '';
ALTER SYSTEM SET entity_cache.redis_url = 'http://127.0.0.1:6379';
ALTER SYSTEM SET entity_cache.redis_url = 'rediss://';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://h1,,h2/0';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://h1:6379,h2:0/0';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://h1,h2,h3,h4,h5,h6,h7,h8,h9,h10,h11,h12,h13,h14,h15,h16,h17';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://127.0.0.1:6379?db=1';
ALTER SYSTEM SET entity_cache.redis_url = 'redis-sentinel://127.0.0.1:26379/0';
ALTER SYSTEM SET entity_cache.redis_url = 'redis-sentinel://127.0.0.1:26379/0?master=';
ALTER SYSTEM SET entity_cache.redis_url = 'redis-sentinel://127.0.0.1:26379/0?master=m&db=1';
ALTER SYSTEM SET entity_cache.redis_url = 'rediss-sentinel://:pw@/0?master=m';
ALTER SYSTEM SET entity_cache.redis_url = 'redis+sentinel://127.0.0.1:26379?master=m';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://:6379/0';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://user:pw@/0';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://127.0.0.1:0';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://127.0.0.1:65536';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://127.0.0.1:port';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://127.0.0.1:6379/db1';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://[::1';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://us%zzer:pw@h';
ALTER SYSTEM SET entity_cache.redis_url = 'unix://';
ALTER SYSTEM SET entity_cache.redis_url = 'unix://relative/redis.sock';
ALTER SYSTEM SET entity_cache.redis_url = 'unix:///run/redis.sock?database=1';
ALTER SYSTEM SET entity_cache.mode = 'invalidate';
ALTER SYSTEM SET entity_cache.ttl = 0;
ALTER SYSTEM SET entity_cache.ttl = -1;
ALTER SYSTEM SET entity_cache.batch_size = 0;
ALTER SYSTEM SET entity_cache.batch_size = -5;
ALTER SYSTEM SET entity_cache.redis_timeout = 0;
ALTER SYSTEM SET entity_cache.redelete_delay = 1001;
ALTER SYSTEM SET entity_cache.redelete_steps = 0;
ALTER SYSTEM SET entity_cache.redelete_steps = 9;
ALTER SYSTEM SET entity_cache.redis_tls_verify = 'maybe';
SET entity_cache.mode = 'refresh';
SET entity_cache.database = 'other';
SET entity_cache.no_such_setting = 1;

-- entity_cache.notify: applied (the default), commit, off; on/true mean
-- applied, false means off; anything else is refused with the list
SHOW entity_cache.notify;
SET entity_cache.notify = 'sometimes';
SET entity_cache.notify = '';
SET entity_cache.notify = 2;
SET entity_cache.notify = commit;
SHOW entity_cache.notify;
SET entity_cache.notify = on;
SHOW entity_cache.notify;
SET entity_cache.notify = off;
SHOW entity_cache.notify;
SET entity_cache.notify = true;
SHOW entity_cache.notify;
SET entity_cache.notify = false;
SHOW entity_cache.notify;
SET entity_cache.notify = 'APPLIED';
SHOW entity_cache.notify;
ALTER SYSTEM SET entity_cache.notify = 'never';
SELECT enumvals FROM pg_settings WHERE name = 'entity_cache.notify';
RESET entity_cache.notify;

-- good values are accepted (and then put back)
ALTER SYSTEM SET entity_cache.redis_url = 'redis://app:p%40ss@cache.internal:6380/2';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://[::1]:6379';
ALTER SYSTEM SET entity_cache.redis_url = 'unix:///run/redis/redis.sock?db=3';
ALTER SYSTEM SET entity_cache.redis_url = 'rediss://app:pw@cache.example.com:6380/0';
ALTER SYSTEM SET entity_cache.redis_url = 'redis://10.0.0.1:6379,10.0.0.2:6380,[::1]:6381/3';
ALTER SYSTEM SET entity_cache.redis_url = 'rediss-sentinel://:pw@s1,s2:26380/1?master=my%2Dmaster';
ALTER SYSTEM SET entity_cache.redis_tls_verify = 'ca';
ALTER SYSTEM SET entity_cache.redis_tls_ca_file = '/etc/ssl/certs/ca-certificates.crt';
ALTER SYSTEM SET entity_cache.mode = 'refresh';
ALTER SYSTEM SET entity_cache.ttl = '5min';
ALTER SYSTEM RESET ALL;

-- the capture function is only a trigger
SELECT entity_cache.capture();
CREATE TABLE app.rowtrig (id int);
CREATE TRIGGER bad AFTER INSERT ON app.rowtrig FOR EACH ROW EXECUTE FUNCTION entity_cache.capture('k:{id}');
INSERT INTO app.rowtrig VALUES (1);
DROP TRIGGER bad ON app.rowtrig;
CREATE TRIGGER bad AFTER INSERT ON app.rowtrig FOR EACH STATEMENT EXECUTE FUNCTION entity_cache.capture('k:{id}');
INSERT INTO app.rowtrig VALUES (1);
DROP TABLE app.rowtrig;

-- invalidate() needs app.entity watched
SELECT entity_cache.unwatch('app.entity');
SELECT entity_cache.invalidate('x');
SELECT entity_cache.watch('app.entity');

-- a queue changed by hand: writes fail with a clear message instead of
-- writing columns by position into the wrong place
BEGIN;
ALTER TABLE entity_cache.queue ADD COLUMN junk int;
UPDATE app.entity SET label = 'x' WHERE code = 'a';
ROLLBACK;
BEGIN;
ALTER TABLE entity_cache.queue DROP COLUMN template;
UPDATE app.entity SET label = 'x' WHERE code = 'a';
ROLLBACK;
BEGIN;
ALTER TABLE entity_cache.queue ALTER COLUMN relid TYPE int8;
UPDATE app.entity SET label = 'x' WHERE code = 'a';
ROLLBACK;
-- an index the writers' catalog insert path cannot maintain: a clear
-- error, not a crash (an expression index crashed every writer); a plain
-- one is maintained
BEGIN;
CREATE INDEX queue_lower_key ON entity_cache.queue ((lower(key)));
INSERT INTO app.entity (code) VALUES ('qi1');
ROLLBACK;
BEGIN;
CREATE INDEX queue_some_keys ON entity_cache.queue (key) WHERE op = 'k';
INSERT INTO app.entity (code) VALUES ('qi2');
ROLLBACK;
BEGIN;
CREATE INDEX queue_key ON entity_cache.queue (key);
INSERT INTO app.entity (code) VALUES ('qi3');
SET LOCAL enable_seqscan = off;
SELECT op, key FROM entity_cache.queue WHERE key = 'entity:metadata:qi3';
ROLLBACK;
