-- Every SQL statement batcher runs, as named blocks. store.py loads them into Q[name].

-- name: create_schema_migrations
-- Created first, under the migration lock, so concurrent migrators never race on CREATE.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: schema_version
-- The highest applied schema version (NULL when none).
SELECT max(version) FROM schema_migrations;

-- name: record_migration
INSERT INTO schema_migrations (version, name) VALUES ($1, $2) ON CONFLICT (version) DO NOTHING;

-- ===================================================================== jobs (batch_config)

-- name: configured_jobs_of_type
-- Configured (file or API) jobs of one handler type, for the commands a handler contributes: name, params.
SELECT job_name, params FROM batch_config WHERE job_type = $1 AND NOT adhoc AND NOT orphaned ORDER BY job_name;

-- name: config_file_entries
-- Jobs as the file sync sees them: name → (source, file_hash, orphaned).
SELECT job_name, source, file_hash, orphaned, adhoc FROM batch_config;

-- name: upsert_file_job
-- Insert a job from the file, or update it when its file entry changed (an API edit wins until then).
-- $1 name, $2 type, $3 enabled, $4 interval, $5 cron, $6 tz, $7 params, $8 queue, $9 priority,
-- $10 max_retries, $11 max_abandons, $12 retry_base, $13 timeout, $14 overlap, $15 misfire_grace,
-- $16 prefetch, $17 depends_on, $18 paused, $19 file_hash, $20 next_run_at (stored only when enabled:
-- a disabled job has no next run)
INSERT INTO batch_config AS c (job_name, job_type, enabled, interval_minutes, cron, timezone, params, queue,
    priority, max_retries, max_abandons, retry_base_seconds, timeout_seconds, overlap, misfire_grace_seconds,
    prefetch_batches, depends_on, paused, source, file_hash, orphaned, adhoc, schedule_anchor, next_run_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, 'file', $19,
        false, false, $21, CASE WHEN $3 THEN $20::timestamptz END)
ON CONFLICT (job_name) DO UPDATE SET
    job_type = EXCLUDED.job_type, enabled = EXCLUDED.enabled, interval_minutes = EXCLUDED.interval_minutes,
    cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, params = EXCLUDED.params, queue = EXCLUDED.queue,
    priority = EXCLUDED.priority, max_retries = EXCLUDED.max_retries, max_abandons = EXCLUDED.max_abandons,
    retry_base_seconds = EXCLUDED.retry_base_seconds, timeout_seconds = EXCLUDED.timeout_seconds,
    overlap = EXCLUDED.overlap, misfire_grace_seconds = EXCLUDED.misfire_grace_seconds,
    prefetch_batches = EXCLUDED.prefetch_batches, depends_on = EXCLUDED.depends_on,
    paused = EXCLUDED.paused, source = 'file', file_hash = EXCLUDED.file_hash, orphaned = false,
    adhoc = false, schedule_anchor = EXCLUDED.schedule_anchor, next_run_at = EXCLUDED.next_run_at,
    updated_at = now()
WHERE c.file_hash IS DISTINCT FROM EXCLUDED.file_hash OR c.orphaned OR c.adhoc;

-- name: set_job_sink
-- A file job's `sink` (NULL: each stream's own), taken from the file on every sync (only the file sets it).
UPDATE batch_config SET sink = $2, updated_at = now() WHERE job_name = $1 AND sink IS DISTINCT FROM $2;

-- name: orphan_jobs
-- Jobs that came from the file but are no longer in it: disabled and marked orphaned.
UPDATE batch_config SET enabled = false, orphaned = true, next_run_at = NULL, updated_at = now()
WHERE source = 'file' AND NOT orphaned AND NOT (job_name = ANY($1::text[]));

-- name: upsert_adhoc_job
-- An ad-hoc job created by `run-job TYPE`: never scheduled (enabled=false, adhoc=true).
INSERT INTO batch_config (job_name, job_type, enabled, params, adhoc, source, next_run_at)
VALUES ($1, $2, false, $3, true, 'cli', NULL)
ON CONFLICT (job_name) DO UPDATE SET updated_at = now()
WHERE batch_config.adhoc
RETURNING job_name;

-- name: get_job
SELECT * FROM batch_config WHERE job_name = $1;

-- name: list_jobs
SELECT * FROM batch_config ORDER BY job_name;

-- name: lock_job_family
-- Lock order (DESIGN §5): every transaction that may lock a run row and job rows locks the job rows
-- first — the run's job and the jobs that depend on it, in job_name order — then the run row. A
-- finisher, the reaper and run-job all take this lock first, so they never wait on each other in a cycle.
SELECT job_name FROM batch_config WHERE job_name = $1 OR depends_on @> ARRAY[$1]::text[]
ORDER BY job_name FOR UPDATE;

-- name: abandoned_run
-- One candidate of abandoned_runs, re-checked and locked after its job rows were locked.
SELECT r.* FROM batch_runs r LEFT JOIN workers w ON w.worker_id = r.worker_id
WHERE r.id = $2 AND r.status = 'running' AND (
    r.lease_expires_at < now() OR w.worker_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
          AND l.classid = $1::oid AND l.objid = w.lock_key::oid AND l.objsubid = 2))
FOR UPDATE OF r SKIP LOCKED;

-- name: lock_job
-- Serialises run creation for one job (run-job, manual triggers, materialize).
SELECT * FROM batch_config WHERE job_name = $1 FOR UPDATE;

-- name: set_paused
UPDATE batch_config SET paused = $2, updated_at = now() WHERE job_name = $1 RETURNING job_name;

-- name: set_next_run
UPDATE batch_config SET next_run_at = $2, last_fire_at = COALESCE($3, last_fire_at) WHERE job_name = $1;

-- name: mark_success
UPDATE batch_config SET last_success_at = now() WHERE job_name = $1;

-- ===================================================================== scheduling

-- name: due_jobs
-- Enabled, unpaused jobs whose next occurrence has come (locked; other schedulers skip them).
SELECT job_name, job_type, interval_minutes, cron, timezone, schedule_anchor, every_weeks, next_run_at,
       last_fire_at, params, priority, overlap, misfire_grace_seconds, now() AS db_now
FROM batch_config
WHERE enabled AND NOT paused AND next_run_at IS NOT NULL AND next_run_at <= now()
ORDER BY next_run_at
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: job_busy
-- (queued, running) run counts of a job.
SELECT count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE status = 'running') AS running
FROM batch_runs WHERE job_name = $1 AND status IN ('queued', 'running');

-- name: insert_scheduled_run
-- One queued run per occurrence; a duplicate occurrence is ignored.
INSERT INTO batch_runs (job_name, job_type, trigger, scheduled_for, priority, params, root_trigger)
VALUES ($1, $2, 'schedule', $3, $4, $5, 'schedule')
ON CONFLICT (job_name, scheduled_for) WHERE trigger = 'schedule' DO NOTHING
RETURNING id;

-- name: insert_skipped_run
-- A skipped occurrence (missed, overlap, upstream_failed) with its details in result.
INSERT INTO batch_runs (job_name, job_type, trigger, scheduled_for, status, reason, params, result,
                        finished_at, root_trigger)
VALUES ($1, $2, $3, $4, 'skipped', $5, $6, $7, now(), $3)
ON CONFLICT (job_name, scheduled_for) WHERE trigger = 'schedule' DO NOTHING
RETURNING id;

-- name: insert_queued_run
-- A manual / dependency / backfill / retry run. $3 trigger, $5 params, $6 delay seconds,
-- $7 retry_of, $8 root_run_id, $9 attempt, $10 abandons, $11 root_trigger
INSERT INTO batch_runs (job_name, job_type, trigger, priority, params, not_before, retry_of, root_run_id,
                        attempt, abandons, root_trigger)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => COALESCE($6::float8, 0)), $7, $8, $9, $10,
        COALESCE($11, $3))
RETURNING id;

-- name: find_queued_manual
-- An already queued manual run of the job with the same params (a repeated trigger returns it).
SELECT id FROM batch_runs
WHERE job_name = $1 AND status = 'queued' AND trigger = 'manual' AND params = $2
ORDER BY id LIMIT 1;

-- name: claim_runs
-- Lock the best claimable jobs (SKIP LOCKED), then their best runs — locked with SKIP LOCKED too, so a claim
-- never waits on a run row (a finishing run holds its row and then wants its job's row: waiting here would
-- deadlock with it). A run's score is priority + aging × minutes queued; a job's best run is its top score
-- (ties: lowest id); jobs rank by their best score (ties: job name). A claimable run is queued, due, not of a
-- cli chain, of an unpaused job in $4 that has no running run.
-- Within one priority level, score order is (queued_at, job_name, id) order with aging and (job_name, id)
-- order without: batch_runs_claim_order and batch_runs_claim_order_by_name hold the queue so (0015).
-- `levels` finds the queued priority levels (one probe each). `walk` steps through every level in that order,
-- one (queued_at, job_name) group per index probe (without aging a group is a job), taking the group's first
-- due non-cli run, and keeps it if its job is claimable and not yet found in the level. A level stops at
-- `want` = 2 × $2 + 16 jobs found (the surplus fills the slots when other daemons hold some of them), at its
-- end, or, with aging, after `cap` = 2 × want groups. Exact: a job not found in a level stopped early has
-- its best run there behind >= $2 found jobs that each rank above it, so it is not among the $2 best, and
-- each of the $2 best has its best run among the runs found. A claim costs `want` probes per level (plus the
-- unclaimable groups stepped over), not a probe per job with a queued run (issue 20: 300 ms at 17,000 such
-- jobs, and the backlog grew with it; now ~2 ms at 100,000 jobs). A level cut at `cap` with fewer than $2
-- jobs found (a few jobs each with many runs queued at different times, or many unclaimable ones) is
-- `short`: then the best run of every job with a queued run is probed instead, per job and level
-- (`queued_jobs`, `job_levels`: the claim of before 0015, exact too, and as costly). Without aging the walk
-- has no cap: stepping over an unclaimable job costs what probing it would.
-- $1 worker, $2 free slots, $3 lease seconds, $4 queues (NULL = all), $5 aging points per minute (>= 0)
WITH RECURSIVE levels AS (
    (SELECT r.priority FROM batch_runs r WHERE r.status = 'queued' ORDER BY r.priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT r.priority FROM batch_runs r WHERE r.status = 'queued' AND r.priority < l.priority
            ORDER BY r.priority DESC LIMIT 1)
    FROM levels l WHERE l.priority IS NOT NULL
), walk AS (
    -- a cursor before each level's first group; the group found next moves it past the group's runs
    SELECT l.priority, '-infinity'::timestamptz AS queued_at, ''::text AS job_name, 0::bigint AS id,
           0::bigint AS past, 0 AS steps, '{}'::text[] AS found, false AS fresh
    FROM levels l WHERE l.priority IS NOT NULL
    UNION ALL
    SELECT w.priority, n.queued_at, n.job_name, n.id, 9223372036854775807, w.steps + 1,
           CASE WHEN e.fresh THEN w.found || n.job_name ELSE w.found END, e.fresh
    FROM walk w CROSS JOIN LATERAL (
        (SELECT r.queued_at, r.job_name, r.id FROM batch_runs r
         WHERE r.status = 'queued' AND r.priority = w.priority AND $5::float8 > 0
           AND (r.queued_at, r.job_name, r.id) > (w.queued_at, w.job_name, w.past)
           AND r.not_before <= now() AND r.root_trigger <> 'cli'
         ORDER BY r.queued_at, r.job_name, r.id LIMIT 1)
        UNION ALL
        (SELECT r.queued_at, r.job_name, r.id FROM batch_runs r
         WHERE r.status = 'queued' AND r.priority = w.priority AND $5::float8 <= 0
           AND (r.job_name, r.id) > (w.job_name, w.past)
           AND r.not_before <= now() AND r.root_trigger <> 'cli'
         ORDER BY r.job_name, r.id LIMIT 1)) n
    CROSS JOIN LATERAL (SELECT n.job_name <> ALL (w.found)  -- scalar subqueries: a probe each, never hashed
        AND (SELECT NOT c.paused AND ($4::text[] IS NULL OR c.queue = ANY($4::text[]))
             FROM batch_config c WHERE c.job_name = n.job_name) IS TRUE
        AND (SELECT x.id FROM batch_runs x WHERE x.job_name = n.job_name AND x.status = 'running' LIMIT 1) IS NULL
        AS fresh OFFSET 0) e  -- OFFSET 0: computed once per group (inlined, each use would probe again)
    WHERE cardinality(w.found) < 2 * $2::bigint + 16 AND (w.steps < 4 * $2::bigint + 32 OR $5::float8 <= 0)
), short AS (
    SELECT EXISTS (SELECT 1 FROM walk WHERE $5::float8 > 0 AND steps >= 4 * $2::bigint + 32
                   AND cardinality(found) < $2::bigint) AS yes
), queued_jobs AS (
    (SELECT r.job_name FROM batch_runs r WHERE r.status = 'queued' AND (SELECT yes FROM short)
     ORDER BY r.job_name LIMIT 1)
    UNION ALL
    SELECT (SELECT r.job_name FROM batch_runs r WHERE r.status = 'queued' AND r.job_name > q.job_name
            ORDER BY r.job_name LIMIT 1)
    FROM queued_jobs q WHERE q.job_name IS NOT NULL
), job_levels AS (
    -- each job's best run of its top level, then of each lower level (one probe each)
    SELECT c.job_name, t.id, t.priority, t.queued_at
    FROM batch_config c CROSS JOIN LATERAL (
        SELECT r.id, r.priority, r.queued_at FROM batch_runs r
        WHERE r.job_name = c.job_name AND r.status = 'queued' AND r.not_before <= now()
          AND r.root_trigger <> 'cli'
        ORDER BY r.priority DESC, r.queued_at, r.id LIMIT 1) t
    WHERE c.job_name = ANY (ARRAY(SELECT job_name FROM queued_jobs WHERE job_name IS NOT NULL))
      AND NOT c.paused AND ($4::text[] IS NULL OR c.queue = ANY($4::text[]))
      AND NOT EXISTS (SELECT 1 FROM batch_runs x WHERE x.job_name = c.job_name AND x.status = 'running')
    UNION ALL
    SELECT l.job_name, t.id, t.priority, t.queued_at
    FROM job_levels l CROSS JOIN LATERAL (
        SELECT r.id, r.priority, r.queued_at FROM batch_runs r
        WHERE r.job_name = l.job_name AND r.status = 'queued' AND r.priority < l.priority
          AND r.not_before <= now() AND r.root_trigger <> 'cli'
        ORDER BY r.priority DESC, r.queued_at, r.id LIMIT 1) t
), candidates AS (
    SELECT job_name, id, priority, queued_at FROM walk WHERE fresh AND NOT (SELECT yes FROM short)
    UNION ALL
    SELECT job_name, id, priority, queued_at FROM job_levels
), best AS (
    SELECT DISTINCT ON (job_name) job_name, id, priority + $5::float8 * extract(epoch FROM now() - queued_at) / 60
        AS score
    FROM candidates
    ORDER BY job_name, score DESC, id
), jobs AS (
    -- (a job of `best` had no running run in this statement's snapshot; paused and queue are re-checked on
    -- the row version locked)
    SELECT c.job_name, best.id, best.score FROM batch_config c JOIN best USING (job_name)
    WHERE c.job_name = ANY (ARRAY(SELECT job_name FROM best)) AND NOT c.paused AND ($4::text[] IS NULL OR c.queue = ANY($4::text[]))
    ORDER BY best.score DESC, c.job_name
    LIMIT $2
    FOR UPDATE OF c SKIP LOCKED
), locked AS (
    SELECT r.id FROM batch_runs r WHERE r.id IN (SELECT id FROM jobs) AND r.status = 'queued'
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE batch_runs r SET status = 'running', worker_id = $1, claim_token = gen_random_uuid(),
    lease_expires_at = now() + make_interval(secs => $3), started_at = now()
FROM locked WHERE r.id = locked.id
RETURNING r.*;

-- name: claim_run_by_id
-- Claim one specific queued run (run-job, trigger --wait of a cli chain).
UPDATE batch_runs SET status = 'running', worker_id = $2, claim_token = gen_random_uuid(),
    lease_expires_at = now() + make_interval(secs => $3), started_at = now()
WHERE id = $1 AND status = 'queued'
RETURNING *;

-- name: running_run_of_job
-- The running run of a job with its worker's liveness.
SELECT r.*, (r.lease_expires_at < now()) AS lease_expired,
       (w.worker_id IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
              AND l.classid = $2::oid AND l.objid = w.lock_key::oid AND l.objsubid = 2)) AS worker_alive
FROM batch_runs r LEFT JOIN workers w ON w.worker_id = r.worker_id
WHERE r.job_name = $1 AND r.status = 'running'
FOR UPDATE OF r;

-- ===================================================================== a run's life

-- name: fence
-- First statement of every transaction that writes for a run: renews the lease, sees a cancel request,
-- and returns the run's commit sequence (the row is locked from here on, so it is the committed one).
-- Zero rows: this worker lost the run.
UPDATE batch_runs SET lease_expires_at = now() + make_interval(secs => $3)
WHERE id = $1 AND claim_token = $2 AND status = 'running'
RETURNING cancel_requested, commit_seq;

-- name: merge_run_result
-- A batch's ``run_result`` keys merged into the run's result (committed with the batch).
UPDATE batch_runs SET result = COALESCE(result, '{}'::jsonb) || $2::jsonb WHERE id = $1;

-- name: add_run_counters
-- Counters committed with each batch: the last statement of the batch's transaction. It renews the lease
-- from the clock (not now(), the transaction's start: a batch longer than the lease would commit an
-- expired one, and the heartbeat skips the row while the batch holds it) and sets the commit sequence.
-- $2 records, $3 dead letters, $4 checked, $5 updated, $6 api calls, $7 ingress bytes,
-- $8 progress (jsonb or NULL), $9 new errors (jsonb array), $10 commit sequence, $11 lease seconds
UPDATE batch_runs SET records = records + $2, dead_letters = dead_letters + $3,
    items_checked = items_checked + $4, items_updated = items_updated + $5,
    api_calls = api_calls + $6, ingress_bytes = ingress_bytes + $7,
    progress = COALESCE($8, progress),
    errors = CASE WHEN jsonb_array_length(errors) >= 20 THEN errors
                  ELSE errors || COALESCE($9, '[]'::jsonb) END,
    commit_seq = $10, lease_expires_at = clock_timestamp() + make_interval(secs => $11)
WHERE id = $1;

-- name: run_commit_seq
-- After an ambiguous COMMIT: the run's commit sequence, once the transaction in doubt has ended (FOR SHARE
-- waits for it while the server still holds its row lock).
SELECT commit_seq FROM batch_runs WHERE id = $1 FOR SHARE;

-- name: finish_run
-- Final status of a run (fenced by the preceding `fence` in the same transaction).
-- $2 status, $3 reason, $4 errors to append (jsonb array), $5 result, $6 api calls, $7 ingress bytes
UPDATE batch_runs SET status = $2, reason = $3, finished_at = now(),
    runtime_ms = (extract(epoch FROM now() - started_at) * 1000)::bigint,
    errors = (errors || COALESCE($4, '[]'::jsonb)),
    result = CASE WHEN $5::jsonb IS NULL THEN result ELSE COALESCE(result, '{}'::jsonb) || $5::jsonb END,
    api_calls = api_calls + $6, ingress_bytes = ingress_bytes + $7,
    lease_expires_at = NULL
WHERE id = $1
RETURNING *;

-- name: get_checkpoints
-- The committed cursors of a job in one scope ('' for job-scoped streams, the root run id otherwise).
SELECT stream, scope_key, cursor FROM checkpoints WHERE job_name = $1 AND scope_key = ANY($2::text[]);

-- name: upsert_checkpoint
INSERT INTO checkpoints (job_name, stream, scope_key, cursor, run_id, updated_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (job_name, stream, scope_key) DO UPDATE
SET cursor = EXCLUDED.cursor, run_id = EXCLUDED.run_id, updated_at = now();

-- name: delete_run_checkpoints
-- Run-scoped checkpoints die with their chain: its success, or a failure or cancel that queues no retry.
DELETE FROM checkpoints WHERE job_name = $1 AND scope_key = $2;

-- name: insert_run_logs
INSERT INTO run_logs (run_id, seq, level, event, fields)
SELECT $1, COALESCE((SELECT max(seq) FROM run_logs WHERE run_id = $1), 0) + g.ord, g.level, g.event, g.fields
FROM unnest($2::text[], $3::text[], $4::jsonb[]) WITH ORDINALITY AS g(level, event, fields, ord);

-- name: get_run
SELECT * FROM batch_runs WHERE id = $1;

-- name: run_logs
SELECT seq, at, level, event, fields FROM run_logs WHERE run_id = $1 ORDER BY seq LIMIT $2;

-- name: request_cancel
UPDATE batch_runs SET cancel_requested = $2 WHERE id = $1 AND status = 'running' RETURNING id;

-- name: cancel_queued
UPDATE batch_runs SET status = 'cancelled', reason = $2, finished_at = now()
WHERE id = $1 AND status = 'queued' RETURNING id;

-- ===================================================================== workers and liveness

-- name: register_worker
INSERT INTO workers (worker_id, host, pid, version, queues, lock_key, started_at, heartbeat_at)
VALUES ($1, $2, $3, $4, $5, $6, now(), now())
ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now(), lock_key = EXCLUDED.lock_key;

-- name: heartbeat_worker
UPDATE workers SET heartbeat_at = now() WHERE worker_id = $1;

-- name: renew_leases
-- Renew this worker's leases, skipping rows locked by a running batch transaction (never waits).
UPDATE batch_runs SET lease_expires_at = now() + make_interval(secs => $2)
WHERE id IN (SELECT id FROM batch_runs WHERE worker_id = $1 AND status = 'running' AND id = ANY($3::bigint[])
             ORDER BY id FOR UPDATE SKIP LOCKED)
RETURNING id, cancel_requested;

-- name: runs_running_here
-- Which of these runs are still running under this worker: a plain read, so a row locked by our own batch
-- transaction (skipped by renew_leases) is seen, never waited on. A run missing here was taken from us.
SELECT id FROM batch_runs WHERE worker_id = $1 AND status = 'running' AND id = ANY($2::bigint[]);

-- name: delete_worker
DELETE FROM workers WHERE worker_id = $1;

-- name: live_workers
-- Workers whose liveness lock is held.
SELECT count(*) FROM workers w WHERE EXISTS (
    SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
      AND l.classid = $1::oid AND l.objid = w.lock_key::oid AND l.objsubid = 2);

-- name: mark_abandoned_cancelled
-- A dead worker's run whose cancel was requested: the cancel ends it (no retry), with the request's reason.
UPDATE batch_runs SET status = 'cancelled', reason = cancel_requested, finished_at = now(),
    runtime_ms = (extract(epoch FROM now() - started_at) * 1000)::bigint, lease_expires_at = NULL,
    errors = errors || jsonb_build_array('run stopped: ' || cancel_requested || ' (its worker died)')
WHERE id = $1 AND status = 'running' AND cancel_requested IS NOT NULL
RETURNING *;

-- name: cancel_request_of_run
-- The run's pending cancel request, read in its final transaction (after the fence locked the row).
SELECT cancel_requested FROM batch_runs WHERE id = $1;

-- name: abandoned_runs
-- Running runs whose lease expired or whose worker's liveness lock is free (candidates, not locked: the
-- reaper locks each one's job rows first, then re-checks it with abandoned_run).
SELECT r.* FROM batch_runs r LEFT JOIN workers w ON w.worker_id = r.worker_id
WHERE r.status = 'running' AND (
    r.lease_expires_at < now() OR w.worker_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
          AND l.classid = $1::oid AND l.objid = w.lock_key::oid AND l.objsubid = 2))
ORDER BY r.id
LIMIT 100;

-- name: mark_abandoned
UPDATE batch_runs SET status = 'failed', reason = 'abandoned', finished_at = now(),
    runtime_ms = (extract(epoch FROM now() - started_at) * 1000)::bigint, lease_expires_at = NULL,
    errors = errors || '["worker died or lost its lease (abandoned)"]'::jsonb
WHERE id = $1 AND status = 'running'
RETURNING *;

-- name: prune_dead_workers
-- Worker rows whose lock is free and whose runs are all finished.
DELETE FROM workers w WHERE w.heartbeat_at < now() - make_interval(secs => $2) AND NOT EXISTS (
    SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
      AND l.classid = $1::oid AND l.objid = w.lock_key::oid AND l.objsubid = 2)
  AND NOT EXISTS (SELECT 1 FROM batch_runs r WHERE r.worker_id = w.worker_id AND r.status = 'running');

-- name: latest_chain_run
-- The newest run of a job's cli chains (run-job takes over an abandoned or shut-down chain).
SELECT * FROM batch_runs WHERE job_name = $1 AND root_trigger = 'cli' ORDER BY id DESC LIMIT 1;

-- name: seconds_until_next_due
-- How long the loop may sleep before the next occurrence (NULL: nothing scheduled). The first entry of
-- batch_config_due, as ORDER BY … LIMIT 1: written as min(), a plan made on statistics that saw few enabled
-- jobs (jobs created disabled, then enabled) aggregated the whole index — 110 ms at 100,000 jobs, a quarter
-- of the database's busy time in bench/schedule_lag.py (issue 20).
SELECT extract(epoch FROM (SELECT next_run_at FROM batch_config
                           WHERE enabled AND NOT paused AND next_run_at IS NOT NULL
                           ORDER BY next_run_at LIMIT 1) - now());

-- name: notify_wakeup
-- Wake every daemon's loop (payload '' = claim now; 'cancel:<id>' = a cancel request).
SELECT pg_notify('batcher_wakeup', $1);

-- name: list_checkpoints
SELECT job_name, stream, scope_key, cursor, run_id, updated_at FROM checkpoints
WHERE ($1::text IS NULL OR job_name = $1) ORDER BY job_name, stream, scope_key;

-- name: reset_checkpoints
DELETE FROM checkpoints WHERE job_name = $1 AND ($2::text IS NULL OR stream = $2) RETURNING stream, scope_key;

-- ===================================================================== dependencies, backfill, retention

-- name: dependents_of
-- Jobs that depend on $1, locked so concurrent upstream successes queue each dependent once.
SELECT * FROM batch_config WHERE depends_on @> ARRAY[$1]::text[] ORDER BY job_name FOR UPDATE;

-- name: dependencies_satisfied
-- True when every upstream of job $1 (names $2) succeeded after the dependent's last run or skip.
SELECT coalesce(bool_and(d.last_success_at IS NOT NULL AND d.last_success_at > coalesce(
           (SELECT max(r.queued_at) FROM batch_runs r WHERE r.job_name = $1 AND r.trigger <> 'retry'),
           '-infinity'::timestamptz)), false)
FROM batch_config d WHERE d.job_name = ANY($2::text[]);

-- name: has_queued_dependency_run
SELECT EXISTS (SELECT 1 FROM batch_runs WHERE job_name = $1 AND status = 'queued' AND trigger = 'dependency');

-- name: insert_dependency_skip
-- The dependent is recorded skipped when an upstream fails or is cancelled for good ($4: upstream_failed
-- or upstream_cancelled).
INSERT INTO batch_runs (job_name, job_type, trigger, status, reason, params, result, finished_at, root_trigger)
VALUES ($1, $2, 'dependency', 'skipped', $4, '{}'::jsonb, $3, now(), 'dependency')
RETURNING id;

-- name: prune_finished_runs
-- Retention: up to $2 finished runs older than $1 days (their logs go with them by cascade, retries
-- pointing at them get retry_of NULL through batch_runs_retry_of). Maintenance repeats it, each call its
-- own short transaction, until fewer than $2 go.
DELETE FROM batch_runs WHERE id IN (
    SELECT id FROM batch_runs WHERE finished_at < now() - make_interval(days => $1)
      AND status IN ('succeeded', 'failed', 'cancelled', 'skipped')
    ORDER BY finished_at LIMIT $2);

-- name: prune_resolved_dead_letters
-- Retention: up to $2 dead letters resolved more than $1 days ago (repeated like prune_finished_runs).
DELETE FROM dead_letters WHERE id IN (
    SELECT id FROM dead_letters WHERE resolved_at IS NOT NULL AND resolved_at < now() - make_interval(days => $1)
    LIMIT $2);

-- name: prune_dead_chain_checkpoints
-- Run-scoped checkpoints (scope_key = the chain's root run id) of chains that will not resume: no queued or
-- running run, and none finished within the last $1 days (or no run left at all).
DELETE FROM checkpoints c WHERE c.scope_key <> '' AND NOT EXISTS (
    SELECT 1 FROM batch_runs r WHERE r.root_run_id::text = c.scope_key
      AND (r.status IN ('queued', 'running') OR r.finished_at >= now() - make_interval(days => $1)));

-- name: try_maintenance_lock
-- Only one daemon runs the daily maintenance at a time: a session lock, held on one connection across the
-- maintenance's short transactions.
SELECT pg_try_advisory_lock($1);

-- name: maintenance_unlock
SELECT pg_advisory_unlock($1);

-- ===== admin API
-- Queries of batcher.commands used by the admin API (batcher.api) and of the /metrics scrape
-- (batcher.metrics). Ids and limits are validated before they get here.

-- name: db_now
SELECT now();

-- name: jobs_of_type
-- Configured jobs of a type (ad-hoc and orphaned jobs are addressed by name only): jobType resolution.
SELECT job_name FROM batch_config WHERE job_type = $1 AND NOT adhoc AND NOT orphaned ORDER BY job_name;

-- name: update_job_api
-- An API edit: source='api', file_hash kept, so the file sync leaves the job alone until the file's entry
-- changes (upsert_file_job only overwrites on a new hash). $2 enabled, $3 interval, $4 cron, $5 tz,
-- $6 params, $7 queue, $8 priority, $9 max_retries, $10 max_abandons, $11 retry_base, $12 timeout,
-- $13 overlap, $14 misfire_grace, $15 prefetch, $16 paused, $17 schedule_anchor, $18 next_run_at
UPDATE batch_config SET enabled = $2, interval_minutes = $3, cron = $4, timezone = $5, params = $6, queue = $7,
    priority = $8, max_retries = $9, max_abandons = $10, retry_base_seconds = $11, timeout_seconds = $12,
    overlap = $13, misfire_grace_seconds = $14, prefetch_batches = $15, paused = $16, source = 'api',
    schedule_anchor = $17, next_run_at = $18, updated_at = now()
WHERE job_name = $1
RETURNING *;

-- name: page_runs
-- Newest first, queued_at >= $3 (since) when given; $5 cursor: only ids below it; $4 limit. One statement per
-- combination of the job ($1) and status ($2) filters, each with a static WHERE: a generic plan of
-- `$1 IS NULL OR job_name = $1` cannot use an index on job_name (commands.page_runs picks the statement).
SELECT * FROM batch_runs
WHERE $1::text IS NULL AND $2::text IS NULL
  AND queued_at >= coalesce($3::timestamptz, '-infinity') AND id < coalesce($5::bigint, 9223372036854775807)
ORDER BY id DESC LIMIT $4;

-- name: page_runs_by_job
SELECT * FROM batch_runs
WHERE job_name = $1 AND $2::text IS NULL
  AND queued_at >= coalesce($3::timestamptz, '-infinity') AND id < coalesce($5::bigint, 9223372036854775807)
ORDER BY id DESC LIMIT $4;

-- name: page_runs_by_status
-- `status BETWEEN $2 AND $2`, not `=`, so that ORDER BY status, id DESC is the order of batch_runs_status_recent
-- and no other path gives it: a generic plan guesses that LIMIT $4 reads a tenth of the rows and would
-- otherwise prefer a backward primary-key scan that filters (through the whole history for a rare status).
SELECT * FROM batch_runs
WHERE $1::text IS NULL AND status BETWEEN $2 AND $2
  AND queued_at >= coalesce($3::timestamptz, '-infinity') AND id < coalesce($5::bigint, 9223372036854775807)
ORDER BY status, id DESC LIMIT $4;

-- name: page_runs_by_job_status
SELECT * FROM batch_runs
WHERE job_name = $1 AND status = $2
  AND queued_at >= coalesce($3::timestamptz, '-infinity') AND id < coalesce($5::bigint, 9223372036854775807)
ORDER BY id DESC LIMIT $4;

-- name: latest_run
SELECT * FROM batch_runs WHERE ($1::text IS NULL OR job_name = $1) ORDER BY id DESC LIMIT 1;

-- name: latest_run_per_job
-- The newest run of every job that has one (one index probe per job).
SELECT r.* FROM batch_config c
CROSS JOIN LATERAL (SELECT * FROM batch_runs x WHERE x.job_name = c.job_name ORDER BY x.id DESC LIMIT 1) r
ORDER BY c.job_name;

-- name: job_history
-- The dashboard's charts: every job's last $1 runs that ran (finished, not skipped), newest first (one
-- index scan per job on batch_runs_job_recent); a job without such runs: one row with a null id.
SELECT c.job_name, r.id, r.status, r.reason, r.trigger, r.started_at, r.finished_at, r.runtime_ms, r.records,
       r.dead_letters
FROM batch_config c
LEFT JOIN LATERAL (SELECT * FROM batch_runs x WHERE x.job_name = c.job_name
                   AND x.status IN ('succeeded', 'failed', 'cancelled') ORDER BY x.id DESC LIMIT $1) r ON true
ORDER BY c.job_name, r.id DESC;

-- name: status_jobs
-- Every job with whether it has a timer (enabled, unpaused, scheduled) and its latest start.
SELECT c.job_name, (c.enabled AND NOT c.paused AND c.next_run_at IS NOT NULL) AS timer,
       (SELECT x.started_at FROM batch_runs x WHERE x.job_name = c.job_name AND x.started_at IS NOT NULL
        ORDER BY x.id DESC LIMIT 1) AS last_run_at
FROM batch_config c ORDER BY c.job_name;

-- name: running_job_names
SELECT DISTINCT job_name FROM batch_runs WHERE status = 'running' ORDER BY job_name;

-- name: list_workers
-- Every registered worker, alive when its liveness lock is held ($1: the lock class).
SELECT w.worker_id, w.host, w.pid, w.version, w.queues, w.started_at, w.heartbeat_at, EXISTS (
    SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
      AND l.classid = $1::oid AND l.objid = w.lock_key::oid AND l.objsubid = 2) AS alive
FROM workers w ORDER BY w.started_at, w.worker_id;

-- name: metrics_watermark
-- The feed's next watermark: the database's now() minus the commit lag allowance ($1 seconds).
SELECT now() - make_interval(secs => $1);

-- name: metrics_finished_runs
-- Runs that reached a final status in ($1, $2]: fed once into the run counters and histograms.
-- lag_seconds: due (scheduled_for, else not_before) → start.
SELECT job_name, status, runtime_ms, records, api_calls, dead_letters,
       extract(epoch FROM started_at - coalesce(scheduled_for, not_before))::float8 AS lag_seconds
FROM batch_runs WHERE finished_at > $1 AND finished_at <= $2;

-- name: metrics_jobs
-- Scrape-time gauges per job: last success, claimable queued runs, running runs, unresolved dead letters.
SELECT c.job_name, c.queue, c.last_success_at,
       (SELECT count(*) FROM batch_runs r WHERE r.job_name = c.job_name AND r.status = 'queued'
          AND r.not_before <= now()) AS queued,
       (SELECT count(*) FROM batch_runs r WHERE r.job_name = c.job_name AND r.status = 'running') AS running,
       (SELECT count(*) FROM dead_letters d WHERE d.job_name = c.job_name AND d.resolved_at IS NULL)
           AS dead_letters
FROM batch_config c;


-- ===================================================================== sinks and dead letters

-- name: column_types
-- Each column's name, type (without typmod, for ``$n::type[]`` casts) and whether it is an array.
SELECT a.attname, format_type(a.atttypid, NULL), (a.attndims > 0 OR t.typcategory = 'A')
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped;

-- name: insert_dead_letters
-- Idempotent dead letters: a conflict reopens a resolved row (new reason and run), else does nothing.
-- The command tag counts rows created or reopened.
INSERT INTO dead_letters (job_name, run_id, stream, origin, reason, payload, payload_hash)
SELECT $1, $2, $3, $4, d.reason, d.payload, d.payload_hash
FROM unnest($5::text[], $6::text[], $7::text[]) AS d (reason, payload, payload_hash)
ON CONFLICT (job_name, stream, payload_hash) DO UPDATE
SET resolved_at = NULL, reason = EXCLUDED.reason, run_id = EXCLUDED.run_id, origin = EXCLUDED.origin
WHERE dead_letters.resolved_at IS NOT NULL;

-- name: list_dead_letters
-- Dead letters for ``dead-letters list``: newest first, one job or all, unresolved unless asked.
SELECT id, job_name, run_id, stream, origin, reason, payload, payload_hash, created_at, resolved_at
FROM dead_letters
WHERE ($1::text IS NULL OR job_name = $1) AND ($2::boolean OR resolved_at IS NULL)
ORDER BY id DESC LIMIT $3;

-- name: purge_dead_letters
-- ``dead-letters purge``: a job's dead letters (resolved or not), optionally only those created before $2.
DELETE FROM dead_letters WHERE job_name = $1 AND ($2::timestamptz IS NULL OR created_at < $2);

-- name: unresolved_dead_letters
-- One page of a job's unresolved dead letters for replay, in id order after the id $2.
SELECT id, stream, origin, payload FROM dead_letters
WHERE job_name = $1 AND resolved_at IS NULL AND id > $2
ORDER BY id LIMIT $3;

-- name: resolve_dead_letters
-- Mark replayed dead letters resolved (by the replaying run, when there is one).
UPDATE dead_letters SET resolved_at = now(), run_id = coalesce($2, run_id) WHERE id = ANY($1::bigint[]);

-- name: update_dead_letter_reasons
-- Dead letters that still fail on replay keep their row with the new reason.
UPDATE dead_letters AS d SET reason = u.reason, run_id = coalesce($3, d.run_id)
FROM unnest($1::bigint[], $2::text[]) AS u (id, reason) WHERE d.id = u.id;

-- name: retry_of
-- The retry row that continues a run, if any (trigger --wait follows a chain).
SELECT id FROM batch_runs WHERE retry_of = $1 ORDER BY id LIMIT 1;

-- name: applied_versions
-- Every applied schema version (migrations apply by set difference, never by "above the highest").
SELECT coalesce(array_agg(version), '{}') FROM schema_migrations;

-- name: jobhistory_watermark
-- The job-history mirror's watermark: runs finished at or before it are in MongoDB's `jobhistories`.
SELECT finished_at FROM jobhistory_mirror WHERE id = 1;

-- name: set_jobhistory_watermark
-- Move the job-history mirror's watermark forward (never back).
INSERT INTO jobhistory_mirror (id, finished_at) VALUES (1, $1)
ON CONFLICT (id) DO UPDATE SET finished_at = GREATEST(jobhistory_mirror.finished_at, EXCLUDED.finished_at),
    updated_at = now();

-- name: finished_runs_after
-- A page of finished runs in (finished_at, id) order after ($1, $2), for the job-history mirror.
SELECT id, job_name, job_type, trigger, status, reason, attempt, retry_of, root_run_id, source_id,
       started_at, finished_at, runtime_ms, records, dead_letters, items_checked, items_updated, api_calls,
       ingress_bytes, progress, errors, result
FROM batch_runs
WHERE finished_at IS NOT NULL AND (finished_at, id) > ($1::timestamptz, $2::bigint)
ORDER BY finished_at, id
LIMIT $3;

-- name: derived_parents
-- Enabled configured jobs of the handler types that derive jobs ($1 types): each may be a parent.
-- Everything a derived job copies is selected, so a change of the parent is seen as a change of its
-- derived jobs.
SELECT job_name, job_type, params, queue, priority, max_retries, max_abandons, retry_base_seconds,
       timeout_seconds, overlap, misfire_grace_seconds, prefetch_batches, paused,
       next_run_at IS NOT NULL AS scheduled
FROM batch_config
WHERE job_type = ANY($1::text[]) AND enabled AND source <> 'derived' AND NOT orphaned AND NOT adhoc
ORDER BY job_name;

-- name: unschedule_parents
-- Parents ($1) are scheduled through their derived jobs only: their own next run is cleared.
UPDATE batch_config SET next_run_at = NULL
WHERE job_name = ANY($1::text[]) AND next_run_at IS NOT NULL;

-- name: upsert_derived_job
-- Create or refresh a derived job from its parent's settings. $1 name, $2 parent, $3 params,
-- $4 interval, $5 cron, $6 tz, $7 every_weeks, $8 schedule_anchor, $9 next_run_at (used when the job is
-- new, comes back from orphaned, or its schedule changed). A job taken over by an API edit
-- (source 'api') is left alone.
INSERT INTO batch_config AS c (job_name, job_type, enabled, interval_minutes, cron, timezone, every_weeks,
    schedule_anchor, params, queue, priority, max_retries, max_abandons, retry_base_seconds, timeout_seconds,
    overlap, misfire_grace_seconds, prefetch_batches, paused, source, derived_from, next_run_at)
SELECT $1, p.job_type, true, $4, $5, $6, $7, $8, $3, p.queue, p.priority, p.max_retries, p.max_abandons,
       p.retry_base_seconds, p.timeout_seconds, p.overlap, p.misfire_grace_seconds, p.prefetch_batches,
       p.paused, 'derived', p.job_name, $9
FROM batch_config p WHERE p.job_name = $2
ON CONFLICT (job_name) DO UPDATE SET
    enabled = true, orphaned = false, params = EXCLUDED.params, queue = EXCLUDED.queue,
    priority = EXCLUDED.priority, max_retries = EXCLUDED.max_retries, max_abandons = EXCLUDED.max_abandons,
    retry_base_seconds = EXCLUDED.retry_base_seconds, timeout_seconds = EXCLUDED.timeout_seconds,
    overlap = EXCLUDED.overlap, misfire_grace_seconds = EXCLUDED.misfire_grace_seconds,
    prefetch_batches = EXCLUDED.prefetch_batches, paused = EXCLUDED.paused,
    next_run_at = CASE WHEN c.orphaned OR (c.interval_minutes, c.cron, c.timezone, c.every_weeks,
            c.schedule_anchor) IS DISTINCT FROM (EXCLUDED.interval_minutes, EXCLUDED.cron, EXCLUDED.timezone,
            EXCLUDED.every_weeks, EXCLUDED.schedule_anchor)
        THEN EXCLUDED.next_run_at ELSE c.next_run_at END,
    interval_minutes = EXCLUDED.interval_minutes, cron = EXCLUDED.cron, timezone = EXCLUDED.timezone,
    every_weeks = EXCLUDED.every_weeks, schedule_anchor = EXCLUDED.schedule_anchor, updated_at = now()
WHERE c.source = 'derived' AND c.derived_from = EXCLUDED.derived_from;

-- name: orphan_derived_jobs
-- Derived jobs of parent $1 that it no longer derives (not in $2): disabled and marked orphaned.
UPDATE batch_config SET enabled = false, orphaned = true, next_run_at = NULL, updated_at = now()
WHERE source = 'derived' AND derived_from = $1 AND NOT orphaned AND NOT (job_name = ANY($2::text[]));

-- name: orphan_parentless_derived_jobs
-- Derived jobs whose parent is gone, orphaned or derives nothing any more (not in $1).
UPDATE batch_config SET enabled = false, orphaned = true, next_run_at = NULL, updated_at = now()
WHERE source = 'derived' AND NOT orphaned AND NOT (derived_from = ANY($1::text[]));
