-- Finding a job's dependents on every finished run must not scan every job (GIN on depends_on, used by
-- `depends_on @> ARRAY[job]`).
CREATE INDEX IF NOT EXISTS batch_config_depends_on ON batch_config USING gin (depends_on);
