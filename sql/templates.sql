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
SET entity_cache.notify = on;
INSERT INTO app.tmpl VALUES (4, repeat('k', 524288), 'long', NULL);
SELECT length(key) FROM queued ORDER BY 1;
SELECT count(*) FROM take_queue();
