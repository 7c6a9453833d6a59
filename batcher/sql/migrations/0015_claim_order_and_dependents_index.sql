-- 0015: the run claim and the dependents lookup at 100,000 jobs (issue 20).
-- claim_runs walks each priority level of the queue in the order its runs score in: oldest first with aging
-- (ties: job name, then lowest id), job name then lowest id without, and stops once it has found enough
-- claimable jobs in the level — a claim costs the free slots (and the queued runs it steps over), not one
-- probe per job with a queued run (300 ms at 17,000 such jobs). batch_runs_claim_order_by_name replaces
-- batch_runs_claimable_by_id (its only reader was the claim).
CREATE INDEX IF NOT EXISTS batch_runs_claim_order ON batch_runs (priority DESC, queued_at, job_name, id)
    WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS batch_runs_claim_order_by_name ON batch_runs (priority DESC, job_name, id)
    WHERE status = 'queued';
DROP INDEX IF EXISTS batch_runs_claimable_by_id;
-- Every finished run looks up its job's dependents (`dependents_of`, `lock_job_family`: depends_on @> …)
-- through this GIN index. With fastupdate every batch_config update (set_next_run, each occurrence) went to
-- its pending list, which each lookup reads whole until a vacuum flushes it (up to 4 MB: ~1 ms per lookup
-- at 20,000 updates; 37 % of the database's busy time at 100,000 jobs once the claim was fixed). Without
-- it an update inserts into the index at once and a lookup is a probe.
ALTER INDEX batch_config_depends_on SET (fastupdate = off);
SELECT gin_clean_pending_list('batch_config_depends_on');
