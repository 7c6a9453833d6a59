-- The agent batch handler's reads (PostgreSQL through RunContext.postgres). Loaded by sql.py as Q.

-- name: data_versions
-- Change counters of the source tables (bumped by triggers): the cache's validity.
SELECT source, version FROM agent_data_versions;

-- name: valid_users
-- The active users among $1 (one query per chunk): their tenants.
SELECT user_id, tenant_id FROM system_users WHERE active AND user_id = ANY($1::text[]);

-- name: user_page
-- Active users after $2 (keyset on user_id), optionally of tenant $1, at most $3.
SELECT user_id FROM system_users
WHERE active AND ($1::text IS NULL OR tenant_id = $1) AND user_id > $2
ORDER BY user_id LIMIT $3;

-- name: user_count
-- How many active users (optionally of tenant $1): the progress total of user types.
SELECT count(*) FROM system_users WHERE active AND ($1::text IS NULL OR tenant_id = $1);

-- name: item_page
-- Category items of type $1 whose data contains $2 after item $3 (keyset), at most $4.
SELECT item_id, data, user_ref FROM category_items
WHERE category_type = $1 AND data @> $2::jsonb AND item_id > $3
ORDER BY item_id LIMIT $4;

-- name: item_count
-- How many category items of type $1 match the filters $2.
SELECT count(*) FROM category_items WHERE category_type = $1 AND data @> $2::jsonb;

-- name: items_of_users
-- Category items of type $1 matching $2 that belong to the users $3, by owner then item.
SELECT item_id, data, user_ref FROM category_items
WHERE category_type = $1 AND data @> $2::jsonb AND user_ref = ANY($3::text[])
ORDER BY user_ref, item_id;

-- name: members
-- Users with their effective preferences for feature $1: their own row, else the defaults ($2 frequency,
-- $3 time, $4 timezone) for active users without one. Filtered to a group ($5 frequency, $6 time, $7 tz;
-- NULL: every group) and tenant $8, after user $9 (keyset), at most $10. A preference row whose user is
-- missing or inactive is listed too (validation counts it invalid).
SELECT user_id, tenant_id, template_override FROM (
    SELECT p.user_id, p.tenant_id, p.template_override, p.frequency, p.time_of_day, p.timezone
    FROM user_preferences p WHERE p.feature_type = $1
    UNION ALL
    SELECT u.user_id, u.tenant_id, NULL, $2, $3::time, $4 FROM system_users u
    WHERE u.active AND NOT EXISTS (SELECT 1 FROM user_preferences p
                                   WHERE p.user_id = u.user_id AND p.feature_type = $1)
) m
WHERE ($5::text IS NULL OR (frequency = $5 AND time_of_day = $6::time AND timezone = $7))
  AND ($8::text IS NULL OR tenant_id = $8) AND user_id > $9
ORDER BY user_id LIMIT $10;

-- name: member_count
-- How many users the members query lists for the same $1..$8 (no keyset, no limit).
SELECT count(*) FROM (
    SELECT p.user_id, p.tenant_id, p.frequency, p.time_of_day, p.timezone
    FROM user_preferences p WHERE p.feature_type = $1
    UNION ALL
    SELECT u.user_id, u.tenant_id, $2, $3::time, $4 FROM system_users u
    WHERE u.active AND NOT EXISTS (SELECT 1 FROM user_preferences p
                                   WHERE p.user_id = u.user_id AND p.feature_type = $1)
) m
WHERE ($5::text IS NULL OR (frequency = $5 AND time_of_day = $6::time AND timezone = $7))
  AND ($8::text IS NULL OR tenant_id = $8);

-- name: groups
-- The preference groups of feature $1 that have at least one active user (defaults $2..$4 for active
-- users without a row): one derived job each.
SELECT frequency, to_char(time_of_day, 'HH24:MI') AS time_of_day, timezone, count(*) AS users FROM (
    SELECT p.frequency, p.time_of_day, p.timezone FROM user_preferences p
    JOIN system_users u ON u.user_id = p.user_id AND u.active
    WHERE p.feature_type = $1
    UNION ALL
    SELECT $2, $3::time, $4 FROM system_users u
    WHERE u.active AND NOT EXISTS (SELECT 1 FROM user_preferences p
                                   WHERE p.user_id = u.user_id AND p.feature_type = $1)
) m
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;

-- name: succeeded_keys
-- Items of the run chain (root run $1) that already succeeded: a resumed run skips them.
SELECT DISTINCT item_key FROM batch_results WHERE run_id = $1 AND status = 'succeeded';

-- name: user_preference
-- A user's own preference row for a feature ($1 tenant, $2 user, $3 feature).
SELECT frequency, to_char(time_of_day, 'HH24:MI') AS time_of_day, timezone, template_override, updated_at
FROM user_preferences WHERE tenant_id = $1 AND user_id = $2 AND feature_type = $3;

-- name: user_runs
-- The latest run chains with results for a user ($1 tenant, $2 user), optionally of feature $3 (the run's
-- or its job's params), newest first, at most $4: result counts and the chain's latest run.
SELECT r.run_id, root.job_name, last.id AS last_run_id, last.status, last.finished_at,
       count(*) FILTER (WHERE r.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE r.status = 'failed') AS failed, max(r.written_at) AS written_at
FROM batch_results r
JOIN batch_runs root ON root.id = r.run_id
LEFT JOIN batch_config c ON c.job_name = root.job_name
CROSS JOIN LATERAL (SELECT b.id, b.status, b.finished_at FROM batch_runs b
                    WHERE b.root_run_id = r.run_id OR b.id = r.run_id ORDER BY b.id DESC LIMIT 1) last
WHERE r.tenant_id = $1 AND r.user_id = $2
  AND ($3::text IS NULL OR coalesce(root.params ->> 'feature_type', c.params ->> 'feature_type') = $3)
GROUP BY r.run_id, root.job_name, last.id, last.status, last.finished_at
ORDER BY r.run_id DESC LIMIT $4;

-- name: user_group_jobs
-- Derived preference jobs of feature $1 whose group is ($2 frequency, $3 time, $4 timezone).
SELECT job_name, next_run_at, enabled FROM batch_config
WHERE source = 'derived' AND NOT orphaned AND params ->> 'feature_type' = $1
  AND params -> 'group' ->> 'frequency' = $2 AND params -> 'group' ->> 'time_of_day' = $3
  AND params -> 'group' ->> 'timezone' = $4
ORDER BY job_name;
