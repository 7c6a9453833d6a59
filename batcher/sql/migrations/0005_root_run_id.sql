-- Every run names its chain's root: a run that starts a chain is its own root (set on insert, so the
-- column is never NULL for new rows; older rows are backfilled).
CREATE OR REPLACE FUNCTION batch_runs_default_root() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.root_run_id := COALESCE(NEW.root_run_id, NEW.id);
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS batch_runs_default_root ON batch_runs;
CREATE TRIGGER batch_runs_default_root BEFORE INSERT ON batch_runs
    FOR EACH ROW EXECUTE FUNCTION batch_runs_default_root();

UPDATE batch_runs SET root_run_id = id WHERE root_run_id IS NULL;
