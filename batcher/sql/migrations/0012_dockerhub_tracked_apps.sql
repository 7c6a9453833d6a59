-- 0012: the docker-hub-pull and tracked-apps-check handlers' tables (issue 18).
--
-- docker_image_tags: one row per repository tag as Docker Hub last answered (stream policy
-- update_if_changed: an unchanged tag is not rewritten; updated_at is bookkeeping, set when a row changes).
-- architectures is the JSON array of the tag's images' architectures; size_bytes is the tag's full_size.
CREATE TABLE IF NOT EXISTS docker_image_tags (
    repository    text NOT NULL,
    tag           text NOT NULL,
    digest        text,
    architectures jsonb NOT NULL DEFAULT '[]',
    size_bytes    bigint,
    last_updated  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository, tag)
);

-- docker_image_updates: one row per digest change seen (old digest → new digest). root_run_id is in the
-- key so a retried run does not record its change twice (policy ignore); seen_at is bookkeeping.
CREATE TABLE IF NOT EXISTS docker_image_updates (
    repository  text NOT NULL,
    tag         text NOT NULL,
    new_digest  text NOT NULL,
    root_run_id bigint NOT NULL,
    old_digest  text,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository, tag, new_digest, root_run_id)
);
CREATE INDEX IF NOT EXISTS docker_image_updates_seen ON docker_image_updates (repository, tag, seen_at);

-- tracked_apps: managed by `batcher apps add|remove|list` and /api/apps; the check run writes the
-- latest version it found, update_available, the GitHub ETag (If-None-Match) and checked_at.
-- source is `github:owner/repo` or `docker:namespace/repo[:tag-pattern]`.
CREATE TABLE IF NOT EXISTS tracked_apps (
    name             text PRIMARY KEY,
    source           text NOT NULL,
    current_version  text,
    latest_version   text,
    update_available boolean NOT NULL DEFAULT false,
    allow_prerelease boolean NOT NULL DEFAULT false,
    etag             text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    checked_at       timestamptz
);
