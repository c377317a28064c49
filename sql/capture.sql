-- Every write path queues the right keys, in the same transaction.
SET entity_cache.notify = off;

-- INSERT, one row and many
INSERT INTO app.entity (code, label) VALUES ('a', 'A');
INSERT INTO app.entity (code, label) SELECT 'm' || g, 'M' FROM generate_series(1, 3) g;
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- UPDATE
UPDATE app.entity SET label = 'A2' WHERE code = 'a';
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- UPDATE that changes the key column: old and new key
UPDATE app.entity SET code = 'b' WHERE code = 'a';
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- multi-row UPDATE and DELETE
UPDATE app.entity SET label = 'x' WHERE code LIKE 'm%';
DELETE FROM app.entity WHERE code = 'm3';
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- INSERT ... ON CONFLICT DO UPDATE: the conflicting row and the new one
INSERT INTO app.entity (code, label) VALUES ('b', 'B'), ('c', 'C')
ON CONFLICT (code) DO UPDATE SET label = excluded.label;
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- ON CONFLICT DO NOTHING that changes nothing queues nothing
INSERT INTO app.entity (code) VALUES ('b') ON CONFLICT DO NOTHING;
SELECT * FROM queued;

-- MERGE: update, insert and delete actions
MERGE INTO app.entity e
USING (VALUES ('b', 'Bm'), ('d', 'Dm'), ('m1', NULL)) v(code, label) ON e.code = v.code
WHEN MATCHED AND v.label IS NULL THEN DELETE
WHEN MATCHED THEN UPDATE SET label = v.label
WHEN NOT MATCHED THEN INSERT (code, label) VALUES (v.code, v.label);
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- COPY FROM
COPY app.entity (code, label) FROM stdin;
e1	copied
e2	copied
\.
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- writes inside functions and DO blocks
CREATE FUNCTION relabel(c text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE app.entity SET label = 'fn' WHERE code = c;
END $$;
SELECT relabel('e1');
DO $$BEGIN DELETE FROM app.entity WHERE code = 'e2'; END$$;
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- session_replication_role = replica: the triggers fire ALWAYS
SET session_replication_role = replica;
UPDATE app.entity SET label = 'replica' WHERE code = 'c';
RESET session_replication_role;
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- ON DELETE CASCADE into a watched table
CREATE TABLE app.attr (
    id int PRIMARY KEY,
    entity_code text NOT NULL REFERENCES app.entity (code) ON DELETE CASCADE ON UPDATE CASCADE,
    name text);
SELECT entity_cache.watch('app.attr', 'attr:{entity_code}:{id}');
INSERT INTO app.attr VALUES (1, 'd', 'x'), (2, 'd', 'y'), (3, 'c', 'z');
SELECT count(*) FROM take_queue();
DELETE FROM app.entity WHERE code = 'd';
SELECT * FROM queued;
SELECT count(*) FROM take_queue();
-- ON UPDATE CASCADE rewrites the child's key
UPDATE app.entity SET code = 'c2' WHERE code = 'c';
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- many changes of one key in one transaction: queued once
BEGIN;
UPDATE app.entity SET label = 'v1' WHERE code = 'b';
UPDATE app.entity SET label = 'v2' WHERE code = 'b';
DELETE FROM app.entity WHERE code = 'b';
INSERT INTO app.entity (code) VALUES ('b');
SELECT * FROM queued;
COMMIT;
SELECT count(*) FROM take_queue();

-- a rolled-back transaction queues nothing
BEGIN;
UPDATE app.entity SET label = 'gone' WHERE code = 'b';
ROLLBACK;
SELECT * FROM queued;

-- a rolled-back subtransaction queues nothing, and a key it had queued is
-- queued again if changed after the rollback
BEGIN;
UPDATE app.entity SET label = 'kept' WHERE code = 'e1';
SAVEPOINT s1;
UPDATE app.entity SET label = 'lost' WHERE code = 'b';
UPDATE app.entity SET label = 'lost' WHERE code = 'e1';
ROLLBACK TO s1;
SELECT * FROM queued;
UPDATE app.entity SET label = 'again' WHERE code = 'b';
SELECT * FROM queued;
COMMIT;
SELECT count(*) FROM take_queue();

-- an exception block is a subtransaction too
DO $$
BEGIN
    BEGIN
        UPDATE app.entity SET label = 'boom' WHERE code = 'e1';
        RAISE EXCEPTION 'rolled back';
    EXCEPTION WHEN raise_exception THEN
        NULL;
    END;
END $$;
SELECT * FROM queued;

-- a released savepoint keeps its keys, and dedups against them
BEGIN;
SAVEPOINT s2;
UPDATE app.entity SET label = 'sp' WHERE code = 'e1';
RELEASE s2;
UPDATE app.entity SET label = 'sp2' WHERE code = 'e1';
COMMIT;
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- nested savepoints: a key queued in a released inner savepoint goes with
-- the outer one's rollback; keys queued before a rolled-back savepoint, or
-- after a released sibling, stay (each is queued again only if forgotten)
BEGIN;
UPDATE app.entity SET label = 'n0' WHERE code = 'e1';
SAVEPOINT outer_sp;
SAVEPOINT inner_sp;
INSERT INTO app.entity (code) VALUES ('n1');
RELEASE inner_sp;
INSERT INTO app.entity (code) VALUES ('n2');
ROLLBACK TO outer_sp;
SAVEPOINT sib1;
INSERT INTO app.entity (code) VALUES ('n3');
RELEASE sib1;
INSERT INTO app.entity (code) VALUES ('n4');
SAVEPOINT sib2;
INSERT INTO app.entity (code) VALUES ('n5');
UPDATE app.entity SET label = 'n' WHERE code IN ('e1', 'n3', 'n4');
ROLLBACK TO sib2;
UPDATE app.entity SET label = 'n' WHERE code IN ('e1', 'n1', 'n3', 'n4', 'n5');
INSERT INTO app.entity (code) VALUES ('n1'), ('n2'), ('n5');
COMMIT;
SELECT * FROM queued;
SELECT count(*) FROM take_queue();
DELETE FROM app.entity WHERE code LIKE 'n_';
SELECT count(*) FROM take_queue();

-- TRUNCATE queues a flush of each template's pattern
TRUNCATE app.entity CASCADE;
SELECT * FROM queued;
SELECT count(*) FROM take_queue();

-- UPDATE that matches no row queues nothing
UPDATE app.entity SET label = 'none' WHERE code = 'nope';
SELECT * FROM queued;

-- an UPDATE that sets no template column renders each key once, from the
-- new rows; a BEFORE ROW trigger that changes the key column behind the
-- statement's back still queues the old key and the new one
INSERT INTO app.entity (code, label) VALUES ('k1', 'x'), ('k2', 'x');
SELECT count(*) FROM take_queue();
UPDATE app.entity SET label = 'y' WHERE code IN ('k1', 'k2');
SELECT * FROM queued;
SELECT count(*) FROM take_queue();
CREATE FUNCTION app.rekey() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.code := NEW.code || '_re';
    RETURN NEW;
END $$;
CREATE TRIGGER rekey BEFORE UPDATE ON app.entity
    FOR EACH ROW WHEN (NEW.label = 'rekey') EXECUTE FUNCTION app.rekey();
UPDATE app.entity SET label = 'rekey' WHERE code = 'k1';
SELECT * FROM queued;
SELECT count(*) FROM take_queue();
DROP TRIGGER rekey ON app.entity;
DROP FUNCTION app.rekey();
-- a generated column in a template: setting its source sets it too
CREATE TABLE app.gen (id int PRIMARY KEY, base text, slug text GENERATED ALWAYS AS (lower(base)) STORED);
SELECT entity_cache.watch('app.gen', 'gen:{slug}');
INSERT INTO app.gen (id, base) VALUES (1, 'A');
SELECT count(*) FROM take_queue();
UPDATE app.gen SET base = 'B' WHERE id = 1;
SELECT * FROM queued;
SELECT count(*) FROM take_queue();
DROP TABLE app.gen;
