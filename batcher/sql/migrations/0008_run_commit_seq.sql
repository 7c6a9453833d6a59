-- Each batch a run commits bumps its commit sequence in the same transaction, so after an ambiguous
-- COMMIT (the connection or the task lost while it was in flight) the runner can tell whether the batch
-- landed and count its API calls, bytes, log entries and errors exactly once (issue 14, defect 10).
-- A constant default: no table rewrite.
ALTER TABLE batch_runs ADD COLUMN IF NOT EXISTS commit_seq bigint NOT NULL DEFAULT 0;
