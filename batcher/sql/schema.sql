-- batcher schema, version 1 (frozen: every later change is a numbered file in migrations/).

CREATE TABLE IF NOT EXISTS batch_config (
    job_name              text PRIMARY KEY,
    job_type              text NOT NULL,
    enabled               boolean NOT NULL DEFAULT true,
    interval_minutes      integer CHECK (interval_minutes BETWEEN 1 AND 1440),
    cron                  text,
    timezone              text NOT NULL DEFAULT 'UTC',
    schedule_anchor       timestamptz NOT NULL DEFAULT now(),
    params                jsonb NOT NULL DEFAULT '{}'::jsonb,
    queue                 text NOT NULL DEFAULT 'default',
    priority              integer NOT NULL DEFAULT 0,
    max_retries           integer NOT NULL DEFAULT 3,
    max_abandons          integer NOT NULL DEFAULT 5,
    retry_base_seconds    double precision NOT NULL DEFAULT 60,
    timeout_seconds       double precision NOT NULL DEFAULT 1800,
    overlap               text NOT NULL DEFAULT 'skip' CHECK (overlap IN ('skip', 'queue_one')),
    misfire_grace_seconds double precision NOT NULL DEFAULT 0,
    prefetch_batches      integer,
    depends_on            text[] NOT NULL DEFAULT '{}',
    paused                boolean NOT NULL DEFAULT false,
    adhoc                 boolean NOT NULL DEFAULT false,
    source                text NOT NULL DEFAULT 'file' CHECK (source IN ('file', 'api', 'cli')),
    file_hash             text,
    orphaned              boolean NOT NULL DEFAULT false,
    next_run_at           timestamptz,
    last_fire_at          timestamptz,
    last_success_at       timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (interval_minutes IS NULL OR cron IS NULL)
);
CREATE INDEX IF NOT EXISTS batch_config_due ON batch_config (next_run_at)
    WHERE enabled AND NOT paused AND next_run_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS batch_runs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_name         text NOT NULL,
    job_type         text NOT NULL,
    trigger          text NOT NULL
        CHECK (trigger IN ('schedule', 'manual', 'cli', 'retry', 'dependency', 'backfill', 'maintenance')),
    scheduled_for    timestamptz,
    queued_at        timestamptz NOT NULL DEFAULT now(),
    not_before       timestamptz NOT NULL DEFAULT now(),
    status           text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'skipped')),
    reason           text,
    priority         integer NOT NULL DEFAULT 0,
    attempt          integer NOT NULL DEFAULT 1,
    abandons         integer NOT NULL DEFAULT 0,
    retry_of         bigint REFERENCES batch_runs (id) ON DELETE SET NULL,
    root_run_id      bigint,
    root_trigger     text,
    params           jsonb NOT NULL DEFAULT '{}'::jsonb,
    source_id        text,
    worker_id        text,
    claim_token      uuid,
    lease_expires_at timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    runtime_ms       bigint,
    records          bigint NOT NULL DEFAULT 0,
    dead_letters     bigint NOT NULL DEFAULT 0,
    items_checked    bigint NOT NULL DEFAULT 0,
    items_updated    bigint NOT NULL DEFAULT 0,
    api_calls        bigint NOT NULL DEFAULT 0,
    ingress_bytes    bigint NOT NULL DEFAULT 0,
    progress         jsonb NOT NULL DEFAULT '{}'::jsonb,
    errors           jsonb NOT NULL DEFAULT '[]'::jsonb,
    result           jsonb,
    cancel_requested text
);
-- One scheduled run per occurrence (every ON CONFLICT repeats the predicate).
CREATE UNIQUE INDEX IF NOT EXISTS batch_runs_one_per_occurrence
    ON batch_runs (job_name, scheduled_for) WHERE trigger = 'schedule';
-- Never two running runs of one job.
CREATE UNIQUE INDEX IF NOT EXISTS batch_runs_one_running
    ON batch_runs (job_name) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS batch_runs_queued ON batch_runs (job_name, priority DESC, queued_at)
    WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS batch_runs_job_recent ON batch_runs (job_name, id DESC);
CREATE INDEX IF NOT EXISTS batch_runs_running_worker ON batch_runs (worker_id) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS batch_runs_finished ON batch_runs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS run_logs (
    run_id bigint NOT NULL REFERENCES batch_runs (id) ON DELETE CASCADE,
    seq    integer NOT NULL,
    at     timestamptz NOT NULL DEFAULT now(),
    level  text NOT NULL,
    event  text NOT NULL,
    fields jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE IF NOT EXISTS workers (
    worker_id    text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL,
    queues       text[],
    lock_key     bigint NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS checkpoints (
    job_name   text NOT NULL,
    stream     text NOT NULL,
    scope_key  text NOT NULL DEFAULT '',
    cursor     jsonb,
    run_id     bigint,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_name, stream, scope_key)
);

CREATE TABLE IF NOT EXISTS dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_name     text NOT NULL,
    run_id       bigint,
    stream       text NOT NULL,
    origin       text NOT NULL CHECK (origin IN ('handler', 'database')),
    reason       text NOT NULL,
    payload      text NOT NULL,
    payload_hash text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz,
    UNIQUE (job_name, stream, payload_hash)
);

CREATE TABLE IF NOT EXISTS synthetic_records (
    scope_key  text NOT NULL,
    seq        bigint NOT NULL,
    value      text NOT NULL,
    amount     bigint NOT NULL,
    attrs      jsonb,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope_key, seq)
);

CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
