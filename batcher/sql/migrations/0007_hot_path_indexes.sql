-- 0007: hot paths that grow with history (issue 14; bench/hot_paths.py measures them at 1 M runs).
-- claim_runs: a job's best claimable run of each priority level is the first entry of this index that is due
-- (oldest first, lowest id on ties), so a claim probes it per job and level instead of grouping every queued
-- run; not_before is included so the metrics scrape counts a job's due queued runs from the index alone.
-- It replaces batch_runs_queued (its prefix). Without aging (aging_per_minute = 0) the best run of a job is its
-- top priority's lowest id: batch_runs_claimable_by_id.
CREATE INDEX IF NOT EXISTS batch_runs_claimable ON batch_runs (job_name, priority DESC, queued_at, id)
    INCLUDE (not_before) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS batch_runs_claimable_by_id ON batch_runs (job_name, priority DESC, id)
    WHERE status = 'queued';
DROP INDEX IF EXISTS batch_runs_queued;
-- The runs page filtered by status alone reads the newest runs of that status, not the whole history.
CREATE INDEX IF NOT EXISTS batch_runs_status_recent ON batch_runs (status, id DESC);
-- dependencies_satisfied: the dependent's latest non-retry queued_at in one probe.
CREATE INDEX IF NOT EXISTS batch_runs_dependency_mark ON batch_runs (job_name, queued_at)
    WHERE trigger <> 'retry';
-- The metrics scrape counts a job's unresolved dead letters, not all of them.
CREATE INDEX IF NOT EXISTS dead_letters_unresolved ON dead_letters (job_name) WHERE resolved_at IS NULL;
