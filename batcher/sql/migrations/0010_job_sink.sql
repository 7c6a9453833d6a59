-- Issue 16: a job's `sink` (postgres | mongo) overrides its handler's stream sinks; NULL keeps each
-- stream's own. Set from the job's file entry on every sync (the admin API does not edit it).
ALTER TABLE batch_config ADD COLUMN IF NOT EXISTS sink text CHECK (sink IN ('postgres', 'mongo'));

-- The MongoDB job-history mirror's watermark (one row): every run finished at or before `finished_at`
-- has been upserted into `jobhistories` (the mirror re-reads a short overlap before it, see
-- batcher/jobhistory.py).
CREATE TABLE IF NOT EXISTS jobhistory_mirror (
    id          integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    finished_at timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
