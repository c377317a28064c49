-- Key templates: validation at watch time, rendering, flush patterns.
SET entity_cache.notify = off;
CREATE TABLE app.tmpl (id int PRIMARY KEY, org text, "Name" text, note text);

-- errors name the problem
SELECT entity_cache.watch('app.tmpl', '');
SELECT entity_cache.watch('app.tmpl', 'x:{nope}');
SELECT entity_cache.watch('app.tmpl', 'x:{id');
SELECT entity_cache.watch('app.tmpl', 'x:{}');
SELECT entity_cache.watch('app.tmpl', 'x:{id{org}}');
SELECT entity_cache.watch('app.tmpl', 'x:id}');
SELECT entity_cache.watch('app.tmpl', 'x:{name}');
SELECT entity_cache.watch('app.tmpl', E'x:{id}\n');
SELECT entity_cache.watch('app.tmpl', NULL);
SELECT entity_cache.watch('app.nosuch', 'x:{id}');
CREATE VIEW app.v AS SELECT 1 AS id;
SELECT entity_cache.watch('app.v', 'x:{id}');
SELECT * FROM entity_cache.watched WHERE relid = 'app.tmpl'::regclass;

-- several templates: one key each; a template without placeholders is a
-- fixed key (a list, say); case-sensitive column names
SELECT entity_cache.watch('app.tmpl', 'tmpl:{org}:{id}');
SELECT entity_cache.watch('app.tmpl', 'tmpl:list');
SELECT entity_cache.watch('app.tmpl', 'tmpl:name:{Name}');
SELECT entity_cache.watch('app.tmpl', 'tmpl:list');  -- again: no change
SELECT * FROM entity_cache.watched WHERE relid = 'app.tmpl'::regclass;

INSERT INTO app.tmpl VALUES (1, 'acme', 'One', NULL), (2, NULL, 'Two', NULL);
-- a NULL placeholder renders no key (row 2 has no org)
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- keys are sent as they are: quotes, spaces, newlines, glob characters,
-- non-ASCII
INSERT INTO app.tmpl VALUES (3, E'it''s a\nb*?[x]\\', 'Ünïcødé ключ', NULL);
SELECT op, key, vals FROM queued WHERE key LIKE 'tmpl:%:3' OR key LIKE 'tmpl:name:Ü%';
SELECT count(*) FROM take_queue();

-- TRUNCATE flushes: glob characters in the literal text are escaped
CREATE TABLE app.globby (id int);
SELECT entity_cache.watch('app.globby', 'g*?[]\:{id}:x');
TRUNCATE app.globby;
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- literal braces for Redis Cluster hash tags: '{{' and '}}' are one '{'
-- and '}'; the flush pattern keeps them literal too
CREATE TABLE app.tagged (id int, org text);
SELECT entity_cache.watch('app.tagged', 'ent:{{{org}}}:{id}');
SELECT entity_cache.watch('app.tagged', '{{{{x}}}}:{{id}}');
SELECT entity_cache.watch('app.tagged', 'ent:{{org}');
SELECT entity_cache.watch('app.tagged', 'ent:{org}}');
INSERT INTO app.tagged VALUES (1, 'acme');
SELECT op, key, vals FROM queued;
SELECT count(*) FROM take_queue();
TRUNCATE app.tagged;
SELECT * FROM queued;
SELECT count(*) FROM take_queue();
SELECT entity_cache.unwatch('app.tagged');

-- a column renamed after watch: writes still succeed, with a warning, and
-- the whole pattern is flushed instead
ALTER TABLE app.globby RENAME COLUMN id TO ident;
INSERT INTO app.globby VALUES (1);
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- unwatch removes the triggers
SELECT entity_cache.unwatch('app.globby');
INSERT INTO app.globby VALUES (2);
SELECT * FROM queued;
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'app.globby'::regclass;
SELECT * FROM entity_cache.watched WHERE relid = 'app.globby'::regclass;

-- long keys are fine (NOTIFY is skipped for payloads it cannot carry)
SET entity_cache.notify = commit;
INSERT INTO app.tmpl VALUES (4, repeat('k', 524288), 'long', NULL);
SELECT length(key) FROM queued ORDER BY 1;
SELECT count(*) FROM take_queue();

-- value functions: checked at watch(), kept by signature in the trigger
-- arguments, shown by the watched view, carried by the queue rows
CREATE TABLE app.vf (id int PRIMARY KEY, name text, at timestamptz);
CREATE FUNCTION app.vf_two(a app.vf, b int) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
CREATE FUNCTION app.vf_int(a app.vf) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION app.vf_other(a app.tmpl) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
CREATE FUNCTION app.vf_set(a app.vf) RETURNS SETOF text LANGUAGE sql AS $$ SELECT 'x' $$;
CREATE FUNCTION app.vf_ok(a app.vf) RETURNS text LANGUAGE sql
    AS $$ SELECT a.id || '/' || a.name $$;
SELECT entity_cache.watch('app.vf', 'vf:{id}', 'app.vf_two(app.vf, int)');
SELECT entity_cache.watch('app.vf', 'vf:{id}', 'app.vf_int(app.vf)');
SELECT entity_cache.watch('app.vf', 'vf:{id}', 'app.vf_other(app.tmpl)');
SELECT entity_cache.watch('app.vf', 'vf:{id}', 'app.vf_set(app.vf)');
SELECT entity_cache.watch('app.vf', 'vf:{id}', 'app.vf_nosuch(app.vf)');
SELECT entity_cache.watch('app.vf', 'vf:{id}', 'app.vf_ok(app.vf)');
SELECT entity_cache.watch('app.vf', 'vf:name:{name}');
SELECT * FROM entity_cache.watched WHERE relid = 'app.vf'::regclass;
-- the same call again changes nothing; another function replaces the first
SELECT entity_cache.watch('app.vf', 'vf:{id}', 'app.vf_ok(app.vf)');
SELECT entity_cache.watch('app.vf', 'vf:name:{name}', 'app.vf_ok(app.vf)');
SELECT * FROM entity_cache.watched WHERE relid = 'app.vf'::regclass;
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'app.vf'::regclass;
-- a user trigger that borrows the name is not a capture trigger
CREATE TABLE app.lookalike (id int);
CREATE FUNCTION app.noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
CREATE TRIGGER entity_cache_insert AFTER INSERT ON app.lookalike
    FOR EACH STATEMENT EXECUTE FUNCTION app.noop('fake:{id}');
SELECT * FROM entity_cache.watched WHERE relid = 'app.lookalike'::regclass;
-- warm() queues op 'w' rows, in any mode, with what finds the row again
INSERT INTO app.vf VALUES (1, 'one', '2024-03-05 10:00:00.123+00');
SELECT count(*) FROM take_queue();
SELECT entity_cache.warm('app.vf');
SELECT op, key, vals, template FROM entity_cache.queue ORDER BY key;
SELECT count(*) FROM take_queue();
SELECT entity_cache.warm('app.lookalike');
SELECT entity_cache.warm(NULL);
DROP TABLE app.lookalike;
DROP FUNCTION app.noop();
