-- app.entity as the application has it (the seeds' columns).  Used by the
-- demo, the TAP suites, the benchmarks and sql/setup.sql (psql echoes it
-- into the regression output).
CREATE SCHEMA IF NOT EXISTS app;
CREATE TABLE app.entity (
    code text PRIMARY KEY,
    entity_type text NOT NULL DEFAULT 'thing',
    label text,
    label_plural text,
    icon text,
    child_entity_codes text[],
    active_flag boolean NOT NULL DEFAULT true,
    created_ts timestamptz NOT NULL DEFAULT now(),
    modified_ts timestamptz NOT NULL DEFAULT now()
);
