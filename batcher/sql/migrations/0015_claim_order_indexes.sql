-- 0015: the run claim at 100,000 jobs (issue 20). claim_runs walks each priority level of the queue in the
-- order its runs score in: oldest first with aging (ties: job name, then lowest id), job name then lowest id
-- without, and stops once it has found enough claimable jobs in the level — a claim costs the free slots
-- (and the queued runs it has to step over), not one probe per job with a queued run (300 ms at 17,000 such
-- jobs). batch_runs_claim_order_by_name replaces batch_runs_claimable_by_id (its only reader was the claim).
CREATE INDEX IF NOT EXISTS batch_runs_claim_order ON batch_runs (priority DESC, queued_at, job_name, id)
    WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS batch_runs_claim_order_by_name ON batch_runs (priority DESC, job_name, id)
    WHERE status = 'queued';
DROP INDEX IF EXISTS batch_runs_claimable_by_id;
