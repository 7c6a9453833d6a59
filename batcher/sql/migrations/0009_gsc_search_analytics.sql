-- Google Search Console search analytics (handlers/gsc.py, issue 16).
-- One row per (site, search type, dimension set, day, dimension values). The dimension values are
-- nullable (a column is NULL when its dimension is not in the job's set) and a page URL can exceed a
-- btree entry, so the key holds dims_hash (sha256 of the API's `keys` array) instead of the values.
-- dimension_set ("date,query,page,country,device") keeps rows aggregated over different dimension sets
-- apart: a job never replaces another job's rows. A re-read day replaces its rows exactly
-- (Batch.replace_scope = site, search_type, dimension_set, date).
CREATE TABLE IF NOT EXISTS gsc_search_analytics (
    site text NOT NULL,
    search_type text NOT NULL,
    dimension_set text NOT NULL,
    date date NOT NULL,
    dims_hash text NOT NULL,
    query text,
    page text,
    country text,
    device text,
    search_appearance text,
    clicks bigint NOT NULL,
    impressions bigint NOT NULL,
    ctr double precision NOT NULL,
    position double precision NOT NULL,
    data_state text NOT NULL,
    fetched_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, search_type, dimension_set, date, dims_hash)
);
