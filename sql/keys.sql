-- Keys for every table shape and every session (issue 9): partitions,
-- inheritance, temporary and unlogged tables, canonical key text.

-- a partitioned table, watched as a whole; one partition exists already
CREATE TABLE app.pt (id int, region text, label text) PARTITION BY LIST (region);
CREATE TABLE app.pt_us PARTITION OF app.pt FOR VALUES IN ('us');
SELECT entity_cache.watch('app.pt', 'pt:{region}:{id}');
-- watched shows the parent only
SELECT * FROM entity_cache.watched WHERE relid::text LIKE 'app.pt%';

-- through the parent
INSERT INTO app.pt VALUES (1, 'us', 'a');
SELECT op, key FROM take_queue();

-- directly into the partition: INSERT, UPDATE, DELETE, TRUNCATE
INSERT INTO app.pt_us VALUES (2, 'us', 'b');
SELECT op, key FROM take_queue();
UPDATE app.pt_us SET label = 'bb' WHERE id = 2;
SELECT op, key FROM take_queue();
DELETE FROM app.pt_us WHERE id = 2;
SELECT op, key FROM take_queue();
COPY app.pt_us FROM stdin;
20	us	copied
21	us	copied
\.
SELECT op, key FROM take_queue();
TRUNCATE app.pt_us;
SELECT op, key FROM take_queue();
-- TRUNCATE of the parent truncates its partitions: one flush
TRUNCATE app.pt;
SELECT op, key FROM take_queue();

-- a partition created later, with PARTITION OF
CREATE TABLE app.pt_eu PARTITION OF app.pt FOR VALUES IN ('eu');
INSERT INTO app.pt_eu VALUES (3, 'eu', 'c');
SELECT op, key FROM take_queue();

-- a row moving between partitions through the parent: both keys, once each
UPDATE app.pt SET region = 'us' WHERE id = 3;
SELECT op, key FROM take_queue();

-- a table attached later, with columns in another order and a dropped one
CREATE TABLE app.pt_asia (junk int, label text, region text, id int);
ALTER TABLE app.pt_asia DROP COLUMN junk;
INSERT INTO app.pt_asia VALUES ('before', 'asia', 9);
ALTER TABLE app.pt ATTACH PARTITION app.pt_asia FOR VALUES IN ('asia');
INSERT INTO app.pt_asia (id, region, label) VALUES (4, 'asia', 'd');
UPDATE app.pt_asia SET label = 'dd';
SELECT op, key, vals FROM take_queue();

-- a sub-partitioned partition: every level
CREATE TABLE app.pt_sa PARTITION OF app.pt FOR VALUES IN ('sa') PARTITION BY RANGE (id);
CREATE TABLE app.pt_sa_low PARTITION OF app.pt_sa FOR VALUES FROM (0) TO (100);
INSERT INTO app.pt_sa_low VALUES (5, 'sa', 'e');
INSERT INTO app.pt_sa VALUES (6, 'sa', 'f');
SELECT op, key FROM take_queue();

-- many changes of one key in one transaction, through both: queued once
BEGIN;
INSERT INTO app.pt VALUES (7, 'eu', 'g');
UPDATE app.pt_eu SET label = 'gg' WHERE id = 7;
UPDATE app.pt SET label = 'ggg' WHERE id = 7;
COMMIT;
SELECT op, key FROM take_queue();

-- every partition carries the capture triggers, ENABLE ALWAYS
SELECT tgrelid::regclass, tgname, tgenabled
FROM pg_trigger
WHERE tgrelid::regclass::text LIKE 'app.pt%' AND tgname LIKE 'entity_cache%'
ORDER BY tgrelid::regclass::text, tgname;

-- DETACH stops it for the detached table, and only for it
ALTER TABLE app.pt DETACH PARTITION app.pt_asia;
INSERT INTO app.pt_asia VALUES ('gone', 'asia', 8);
SELECT op, key FROM take_queue();
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'app.pt_asia'::regclass;
INSERT INTO app.pt_us VALUES (10, 'us', 'h');
SELECT op, key FROM take_queue();
-- DETACH ... CONCURRENTLY too
CREATE TABLE app.pt_oc PARTITION OF app.pt FOR VALUES IN ('oc');
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'app.pt_oc'::regclass;
ALTER TABLE app.pt DETACH PARTITION app.pt_oc CONCURRENTLY;
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'app.pt_oc'::regclass;
INSERT INTO app.pt_oc VALUES (14, 'oc', 'l');
SELECT op, key FROM take_queue();
DROP TABLE app.pt_oc;

-- a second template reaches the partitions too; unwatch takes them all away
SELECT entity_cache.watch('app.pt', 'ptlist');
INSERT INTO app.pt_eu VALUES (11, 'eu', 'i');
SELECT op, key FROM take_queue();
SELECT entity_cache.unwatch('app.pt');
SELECT count(*) FROM pg_trigger
WHERE tgname LIKE 'entity_cache%' AND tgrelid::regclass::text LIKE 'app.pt%';
INSERT INTO app.pt_us VALUES (12, 'us', 'j');
SELECT op, key FROM take_queue();

-- the owner of a watched table who may not call capture() may still
-- create and attach partitions: they are watched too
SELECT entity_cache.watch('app.pt', 'pt:{region}:{id}');
CREATE ROLE ec_part_owner;
ALTER TABLE app.pt OWNER TO ec_part_owner;
GRANT CREATE, USAGE ON SCHEMA app TO ec_part_owner;
SET ROLE ec_part_owner;
CREATE TABLE app.pt_af PARTITION OF app.pt FOR VALUES IN ('af');
INSERT INTO app.pt_af VALUES (13, 'af', 'k');
RESET ROLE;
SELECT op, key FROM take_queue();
DROP TABLE app.pt, app.pt_asia;
REVOKE ALL ON SCHEMA app FROM ec_part_owner;
DROP ROLE ec_part_owner;

-- a foreign-table partition gets no capture triggers (a foreign table can
-- have no transition tables); partition DDL on watched tables goes on
CREATE EXTENSION file_fdw;
CREATE SERVER ec_files FOREIGN DATA WRAPPER file_fdw;
CREATE TABLE app.fp (id int, region text) PARTITION BY LIST (region);
SELECT entity_cache.watch('app.fp', 'fp:{region}:{id}');
CREATE FOREIGN TABLE app.fp_far PARTITION OF app.fp FOR VALUES IN ('far')
    SERVER ec_files OPTIONS (filename '/dev/null');
CREATE TABLE app.fp_near PARTITION OF app.fp FOR VALUES IN ('near');
SELECT entity_cache.watch('app.fp', 'fplist');
SELECT tgrelid::regclass, count(*) FROM pg_trigger
WHERE tgname LIKE 'entity_cache%' AND tgrelid::regclass::text LIKE 'app.fp%'
GROUP BY 1 ORDER BY 1;
INSERT INTO app.fp VALUES (1, 'near');
INSERT INTO app.fp_near VALUES (2, 'near');
SELECT op, key FROM take_queue() ORDER BY key;
ALTER TABLE app.fp DETACH PARTITION app.fp_far;
SELECT entity_cache.unwatch('app.fp');
DROP TABLE app.fp;
DROP FOREIGN TABLE app.fp_far;
DROP SERVER ec_files;
DROP EXTENSION file_fdw;

-- a partition's own BEFORE ROW trigger changes a key column of a row
-- updated through the parent, which sets no template column: the old key
-- is queued too
CREATE TABLE app.pb (id int, region text, label text, n int) PARTITION BY LIST (region);
CREATE TABLE app.pb_us PARTITION OF app.pb FOR VALUES IN ('us');
SELECT entity_cache.watch('app.pb', 'pb:{label}');
INSERT INTO app.pb VALUES (1, 'us', 'a', 0);
CREATE FUNCTION app.pb_relabel() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.label := NEW.label || '!';
    RETURN NEW;
END $$;
CREATE TRIGGER relabel BEFORE UPDATE ON app.pb_us
    FOR EACH ROW EXECUTE FUNCTION app.pb_relabel();
SELECT count(*) FROM take_queue();
UPDATE app.pb SET n = n + 1 WHERE id = 1;
SELECT op, key FROM take_queue() ORDER BY key;
DROP TABLE app.pb;
DROP FUNCTION app.pb_relabel();

-- inheritance: writes through the parent include its children's rows;
-- a child written directly is watched only if watched itself
CREATE TABLE app.inh (id int);
CREATE TABLE app.inh_child () INHERITS (app.inh);
SELECT entity_cache.watch('app.inh', 'inh:{id}');
INSERT INTO app.inh_child VALUES (1);
SELECT op, key FROM take_queue();
UPDATE app.inh SET id = 2;
SELECT op, key FROM take_queue();
SELECT entity_cache.watch('app.inh_child', 'inh:{id}');
INSERT INTO app.inh_child VALUES (3);
SELECT op, key FROM take_queue();
DROP TABLE app.inh CASCADE;

-- temporary tables are refused; unlogged ones are watched, with a warning
CREATE TEMP TABLE tmp_t (id int);
SELECT entity_cache.watch('tmp_t', 't:{id}');
CREATE UNLOGGED TABLE app.unl (id int);
SELECT entity_cache.watch('app.unl', 'u:{id}');
INSERT INTO app.unl VALUES (1);
SELECT op, key FROM take_queue();
DROP TABLE app.unl;

-- canonical key text: the same key whatever the writer's settings
CREATE TABLE app.typed (
    ts timestamptz, d date, t time, tz timetz, tsl timestamp, iv interval,
    f8 float8, f4 real, b bytea, arr timestamptz[], rng tstzrange,
    n numeric, i int, tx text
);
CREATE DOMAIN app.when_d AS timestamptz;
ALTER TABLE app.typed ADD COLUMN dom app.when_d;
SELECT entity_cache.watch('app.typed', 'ts:{ts}|d:{d}|t:{t}|tz:{tz}|tsl:{tsl}|iv:{iv}');
SELECT entity_cache.watch('app.typed', 'f8:{f8}|f4:{f4}|b:{b}|arr:{arr}|rng:{rng}|dom:{dom}');
SELECT entity_cache.watch('app.typed', 'plain:{n}:{i}:{tx}');
SET TimeZone = 'Asia/Tokyo';
SET DateStyle = 'SQL, DMY';
SET IntervalStyle = 'sql_standard';
SET extra_float_digits = -3;
SET bytea_output = 'escape';
INSERT INTO app.typed VALUES (
    '2024-03-15 19:00:00+09', '2024-03-15', '10:00:00', '10:00:00+09', '2024-03-15 10:00:00',
    '1 day 02:03:04', 0.1, 0.1, '\x6162', ARRAY['2024-03-15 19:00:00+09'::timestamptz],
    '[2024-03-15 19:00:00+09,2024-03-16 19:00:00+09)', 1.50, 7, 'x', '2024-03-15 19:00:00+09');
-- the writer's own settings are back after the statement
SHOW TimeZone;
SHOW DateStyle;
SELECT ts FROM app.typed;
SELECT op, key, vals FROM take_queue() ORDER BY key;
RESET ALL;
UPDATE app.typed SET i = 8;
SELECT op, key FROM take_queue() ORDER BY key;
-- a session with some of the settings already (UTC, default float digits)
-- and not others: the same keys
SET TimeZone = 'Etc/UTC';
SET DateStyle = 'Postgres, DMY';
SET bytea_output = 'escape';
UPDATE app.typed SET i = 9;
SHOW DateStyle;
SELECT op, key FROM take_queue() ORDER BY key;
RESET ALL;
-- warm() renders the same keys, whatever the caller's settings
SET TimeZone = 'Asia/Tokyo';
SET DateStyle = 'SQL, DMY';
SET IntervalStyle = 'sql_standard';
SET extra_float_digits = -3;
SET bytea_output = 'escape';
SELECT entity_cache.warm('app.typed');
SELECT op, key FROM take_queue() ORDER BY key;
RESET ALL;
-- what an application does to build the same text: the same settings
SET TimeZone = 'UTC';
SET DateStyle = 'ISO';
SET IntervalStyle = 'postgres';
SELECT 'ts:' || ts || '|d:' || d || '|t:' || t || '|tz:' || tz || '|tsl:' || tsl || '|iv:' || iv AS key
FROM app.typed;
RESET ALL;

-- output functions that keep state of their own between calls (arrays,
-- ranges, records) over statements of many rows: every key right (they
-- once kept it in a context reset after each row, and the second row
-- crashed the writer)
CREATE TYPE app.pair AS (a int, b text);
CREATE TABLE app.stateful (id int, tags int[], r int4range, tt text[], p app.pair);
SELECT entity_cache.watch('app.stateful', 's:{tags}|{r}|{tt}|{p}');
CREATE FUNCTION stateful_keys() RETURNS SETOF text LANGUAGE sql AS $$
    SELECT 's:' || tags::text || '|' || r::text || '|' || tt::text || '|' || p::text
    FROM app.stateful
$$;
INSERT INTO app.stateful
SELECT g, ARRAY[g, g + 1, g + 2, g + 3, g + 4, g + 5], int4range(g, g + 10),
       ARRAY['x' || g, 'y', 'z z'], ROW(g, 'b ' || g)::app.pair
FROM generate_series(1, 500) g;
SELECT count(*) AS queued, count(*) FILTER (WHERE key IN (SELECT stateful_keys())) AS right_keys
FROM take_queue();
-- an UPDATE that changes the key columns queues the old and the new keys
UPDATE app.stateful SET tags = tags || id, p = ROW(id, 'c')::app.pair;
SELECT count(*) AS queued, count(*) FILTER (WHERE key IN (SELECT stateful_keys())) AS new_keys
FROM take_queue();
SELECT entity_cache.warm('app.stateful');
SELECT count(*) AS queued, count(*) FILTER (WHERE key IN (SELECT stateful_keys())) AS right_keys
FROM take_queue();
DROP FUNCTION stateful_keys();
DROP TABLE app.stateful;
DROP TYPE app.pair;

-- invalidate() renders app.entity's keys the same way
SELECT entity_cache.watch('app.entity', 'entity:at:{modified_ts}');
INSERT INTO app.entity (code, label, modified_ts) VALUES ('kt', 'x', '2024-01-02 03:04:05+00');
SELECT count(*) FROM take_queue();
SET TimeZone = 'America/New_York';
SET DateStyle = 'German';
SELECT entity_cache.invalidate('kt');
SELECT op, key FROM take_queue() ORDER BY key;
RESET ALL;
SELECT entity_cache.unwatch('app.entity');
SELECT entity_cache.watch('app.entity');
DELETE FROM app.entity WHERE code = 'kt';
SELECT count(*) FROM take_queue();
DROP TABLE app.typed;
DROP DOMAIN app.when_d;

-- invalidate() reads the row through SPI, whose columns skip dropped ones:
-- a template column after a dropped column renders its own value
ALTER TABLE app.entity ADD COLUMN pad int, ADD COLUMN late text;
ALTER TABLE app.entity DROP COLUMN pad;
SELECT entity_cache.watch('app.entity', 'entity:late:{late}:{label}');
INSERT INTO app.entity (code, label, late) VALUES ('kd', 'lab', 'lt');
SELECT op, key, vals FROM take_queue() ORDER BY key;
SELECT entity_cache.invalidate('kd');
SELECT op, key, vals FROM take_queue() ORDER BY key;
SELECT entity_cache.unwatch('app.entity');
SELECT entity_cache.watch('app.entity');
DELETE FROM app.entity WHERE code = 'kd';
ALTER TABLE app.entity DROP COLUMN late;
SELECT count(*) FROM take_queue();
