-- batch_runs.retry_of is a foreign key with ON DELETE SET NULL: without an index every run the retention
-- deletes scans batch_runs for the rows that point at it, and `trigger --wait` follows retries by it.
-- Partial: most runs are no retry (retry_of IS NULL), and `retry_of = $1` implies NOT NULL.
CREATE INDEX IF NOT EXISTS batch_runs_retry_of ON batch_runs (retry_of) WHERE retry_of IS NOT NULL;
