-- Every SQL statement batcher runs, as named blocks. store.py loads them into Q[name].

-- name: create_schema_migrations
-- Created first, under the migration lock, so concurrent migrators never race on CREATE.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: schema_version
-- The highest applied schema version (NULL when none).
SELECT max(version) FROM schema_migrations;

-- name: record_migration
INSERT INTO schema_migrations (version, name) VALUES ($1, $2) ON CONFLICT (version) DO NOTHING;
