-- 0011: the hubspot handler's tables (issue 17).
-- hubspot_objects: one row per CRM record (standard and custom object types), keyed by (object_type, id).
-- The stream's conflict policy is `update_if_changed`: a record re-read unchanged touches nothing, and
-- only rows that really changed count as updated. properties is the record's `properties` object as
-- HubSpot sent it (values are strings or null); created_at/updated_at are the record's createdAt/updatedAt;
-- archived/archived_at are set by the `archived` stream (an `archived=true` listing, which also inserts a
-- record archived before it was ever read: its properties stay NULL); synced_at is bookkeeping.
CREATE TABLE IF NOT EXISTS hubspot_objects (
    object_type text NOT NULL,
    id          text NOT NULL,
    properties  jsonb,
    created_at  timestamptz,
    updated_at  timestamptz,
    archived    boolean NOT NULL DEFAULT false,
    archived_at timestamptz,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (object_type, id)
);

CREATE INDEX IF NOT EXISTS hubspot_objects_updated_at ON hubspot_objects (object_type, updated_at);

-- hubspot_events: event occurrences (immutable: conflict policy `ignore`), keyed by HubSpot's event id.
CREATE TABLE IF NOT EXISTS hubspot_events (
    id          text PRIMARY KEY,
    event_type  text NOT NULL,
    object_type text,
    object_id   text,
    occurred_at timestamptz NOT NULL,
    properties  jsonb NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now()
);
