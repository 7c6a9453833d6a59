-- The agent batch processor (handlers/agent_batch, issue 19) and derived jobs (batcher/derived.py).
--
-- Runtime part, general: a handler may maintain jobs derived from one of its configured jobs (the
-- agent handler: one job per group of user preferences). They are batch_config rows with
-- source = 'derived' and derived_from = the parent job's name; the file sync never touches them.
-- every_weeks: a cron schedule that fires only every N-th week, counted from the week (Monday-based,
-- in the job's timezone) of schedule_anchor (biweekly = 2).
ALTER TABLE batch_config DROP CONSTRAINT IF EXISTS batch_config_source_check;
ALTER TABLE batch_config ADD CONSTRAINT batch_config_source_check
    CHECK (source IN ('file', 'api', 'cli', 'derived'));
ALTER TABLE batch_config ADD COLUMN IF NOT EXISTS derived_from text;
ALTER TABLE batch_config ADD COLUMN IF NOT EXISTS every_weeks integer NOT NULL DEFAULT 1
    CHECK (every_weeks BETWEEN 1 AND 52);
CREATE INDEX IF NOT EXISTS batch_config_derived_from ON batch_config (derived_from)
    WHERE derived_from IS NOT NULL;

-- Source tables the handler reads.
CREATE TABLE IF NOT EXISTS system_users (
    user_id   text PRIMARY KEY,
    tenant_id text NOT NULL,
    active    boolean NOT NULL DEFAULT true
);
CREATE TABLE IF NOT EXISTS category_items (
    category_type text NOT NULL,
    item_id       text NOT NULL,
    data          jsonb NOT NULL DEFAULT '{}'::jsonb,
    user_ref      text,
    PRIMARY KEY (category_type, item_id)
);
CREATE TABLE IF NOT EXISTS user_preferences (
    user_id           text NOT NULL,
    tenant_id         text NOT NULL,
    feature_type      text NOT NULL,
    frequency         text NOT NULL CHECK (frequency IN ('hourly', 'daily', 'weekly', 'biweekly', 'monthly')),
    time_of_day       time NOT NULL DEFAULT '09:00',
    timezone          text NOT NULL DEFAULT 'UTC',
    template_override text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, tenant_id, feature_type)
);

-- A preference change wakes the schedulers at once (they re-derive the group jobs on that tick).
CREATE OR REPLACE FUNCTION batcher_preferences_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('batcher_wakeup', 'derived');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS user_preferences_changed ON user_preferences;
CREATE TRIGGER user_preferences_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON user_preferences
    FOR EACH STATEMENT EXECUTE FUNCTION batcher_preferences_changed();
DROP TRIGGER IF EXISTS system_users_changed ON system_users;
CREATE TRIGGER system_users_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON system_users
    FOR EACH STATEMENT EXECUTE FUNCTION batcher_preferences_changed();

-- Written by the runtime through the handler's streams. run_id is the root run of the chain, so a
-- resumed run (a retry after kill -9 or shutdown) updates the rows of the run it continues.
CREATE TABLE IF NOT EXISTS batch_results (
    run_id     bigint NOT NULL,
    tenant_id  text NOT NULL,
    user_id    text NOT NULL,
    item_key   text NOT NULL,
    status     text NOT NULL CHECK (status IN ('succeeded', 'failed')),
    output     jsonb,
    error      text,
    attempts   integer NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, tenant_id, user_id, item_key)
);
CREATE INDEX IF NOT EXISTS batch_results_user ON batch_results (tenant_id, user_id, run_id);
CREATE TABLE IF NOT EXISTS batch_contexts (
    run_id     bigint NOT NULL,
    tenant_id  text NOT NULL,
    context    jsonb NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, tenant_id)
);

-- Change counters of the source tables, bumped by statement triggers: the handler's in-process cache
-- (category pages, preference groups) drops entries read at an older version.
CREATE TABLE IF NOT EXISTS agent_data_versions (
    source  text PRIMARY KEY,
    version bigint NOT NULL DEFAULT 0
);
INSERT INTO agent_data_versions (source) VALUES ('system_users'), ('category_items'), ('user_preferences')
ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION batcher_agent_data_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE agent_data_versions SET version = version + 1 WHERE source = TG_TABLE_NAME;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS system_users_version ON system_users;
CREATE TRIGGER system_users_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON system_users
    FOR EACH STATEMENT EXECUTE FUNCTION batcher_agent_data_changed();
DROP TRIGGER IF EXISTS category_items_version ON category_items;
CREATE TRIGGER category_items_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON category_items
    FOR EACH STATEMENT EXECUTE FUNCTION batcher_agent_data_changed();
DROP TRIGGER IF EXISTS user_preferences_version ON user_preferences;
CREATE TRIGGER user_preferences_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON user_preferences
    FOR EACH STATEMENT EXECUTE FUNCTION batcher_agent_data_changed();
