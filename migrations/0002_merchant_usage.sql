-- Usage aggregation (issue 9): Redis counters `usage:{merchant}:{date}:{metric}` copied here with set
-- semantics by the `usage_aggregation` handler (handlers/usage.py). `aggregated_at` is a bookkeeping column:
-- set by the insert's DEFAULT and by an update that changes `value`, never by a rerun that changes nothing.
CREATE TABLE IF NOT EXISTS merchant_usage (
    merchant_id   text        NOT NULL,
    usage_date    date        NOT NULL,
    metric_type   text        NOT NULL,
    value         bigint      NOT NULL,
    aggregated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, usage_date, metric_type)
);

-- aggregate-status and billing read one date at a time.
CREATE INDEX IF NOT EXISTS merchant_usage_date_idx ON merchant_usage (usage_date, metric_type);
