-- 0003: the datasync handler's table (issue 8). Events are immutable: the stream's conflict policy is
-- `ignore`, so a re-read page (overlaps, the re-read last page, a resumed run) inserts nothing twice.
-- payload is the event exactly as received (every field, unicode intact); occurred_at is its `timestamp`
-- (a timestamp without a zone is read as UTC); ingested_at is bookkeeping, set on insert by the sink.

CREATE TABLE IF NOT EXISTS events (
    id          text PRIMARY KEY,
    type        text,
    occurred_at timestamptz,
    payload     jsonb,
    ingested_at timestamptz NOT NULL DEFAULT now()
);
