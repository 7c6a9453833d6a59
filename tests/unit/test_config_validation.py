"""A bad ``batcher.toml`` stops start-up with exit 2 and one line naming the file, job, key and reason.

Issue 3's acceptance list, case by case, through the real CLI: ``batcher.cli.main(["run"])`` in-process
with ``BATCHER_CONFIG`` naming a temporary file and the database/Redis URLs set to the test services.
The configuration is validated before any server starts; as a guard, ``run_daemon`` is replaced so a
file that is wrongly accepted fails the test at once instead of starting a daemon.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batcher import app, clicommands
from batcher.cli import main

pytestmark = pytest.mark.timeout(30)

JOB_HEAD = '[jobs.ingest]\ntype = "synthetic"\ninterval_minutes = 5\n'


@dataclass(frozen=True)
class Case:
    """One bad file: its text, the job and key the message must name, and a fragment of the reason."""

    id: str
    toml: str
    job: str | None
    key: str | None
    reason: str


CASES = [
    Case("not-toml", '[jobs.ingest\ntype = "synthetic"\n', None, None, "not valid TOML"),
    Case("not-toml-value", "[daemon]\nconcurrency = = 4\n", None, None, "not valid TOML"),
    Case("unknown-top-level-key", "colour = 'blue'\n" + JOB_HEAD, None, "colour", "unknown key"),
    Case("unknown-daemon-key", "[daemon]\nconcurency = 4\n" + JOB_HEAD, None, "daemon.concurency",
         "unknown key"),
    Case("unknown-job-key", JOB_HEAD + "intervall = 3\n", "ingest", "intervall", "unknown key"),
    Case("interval-zero", '[jobs.ingest]\ntype = "synthetic"\ninterval_minutes = 0\n', "ingest",
         "interval_minutes", "greater than or equal to 1"),
    Case("interval-too-long", '[jobs.ingest]\ntype = "synthetic"\ninterval_minutes = 1441\n', "ingest",
         "interval_minutes", "less than or equal to 1440"),
    Case("cron-out-of-range", '[jobs.ingest]\ntype = "synthetic"\ncron = "61 * * * *"\n', "ingest", "cron",
         "61"),
    Case("cron-four-fields", '[jobs.ingest]\ntype = "synthetic"\ncron = "* * * *"\n', "ingest", "cron",
         "5 fields"),
    Case("cron-bad-weekday", '[jobs.ingest]\ntype = "synthetic"\ncron = "0 3 * * 8"\n', "ingest", "cron",
         "day of week"),
    # issue 14 #13: a date that never exists is refused like the API refuses it, not silently never run
    Case("impossible-cron-feb-30", '[jobs.ingest]\ntype = "synthetic"\ncron = "0 0 30 2 *"\n', "ingest", "cron",
         "never fires"),
    Case("impossible-cron-apr-31", '[jobs.ingest]\ntype = "synthetic"\ncron = "15 4 31 4 *"\n'
         'timezone = "Europe/Berlin"\n', "ingest", "cron", "never fires"),
    Case("impossible-cron-hour-star", '[jobs.ingest]\ntype = "synthetic"\ncron = "0 * 31 6,9 *"\n', "ingest",
         "cron", "never fires"),
    Case("bad-timezone", '[jobs.ingest]\ntype = "synthetic"\ncron = "0 3 * * *"\ntimezone = "Mars/Olympus"\n',
         "ingest", "timezone", "unknown timezone 'Mars/Olympus'"),
    Case("unknown-type", '[jobs.ingest]\ntype = "no-such-handler"\ninterval_minutes = 5\n', "ingest", "type",
         "unknown job type 'no-such-handler'"),
    Case("interval-and-cron", JOB_HEAD + 'cron = "0 3 * * *"\n', "ingest", "cron",
         "set either interval_minutes or cron, not both"),
    Case("schedule-and-depends-on", JOB_HEAD + '[jobs.after]\ntype = "synthetic"\ninterval_minutes = 5\n'
         'depends_on = ["ingest"]\n', "after", "depends_on", "no schedule of its own"),
    Case("bad-overlap", JOB_HEAD + 'overlap = "never"\n', "ingest", "overlap", "'skip' or 'queue_one'"),
    Case("dependency-cycle",
         JOB_HEAD + '[jobs.a]\ntype = "synthetic"\ndepends_on = ["b"]\n'
         '[jobs.b]\ntype = "synthetic"\ndepends_on = ["a"]\n', None, "depends_on", "dependency cycle"),
    Case("self-dependency", JOB_HEAD + '[jobs.a]\ntype = "synthetic"\ndepends_on = ["a"]\n', "a",
         "depends_on", "dependency cycle"),
    Case("unknown-dependency",
         JOB_HEAD + '[jobs.after]\ntype = "synthetic"\ndepends_on = ["ingest", "ghost"]\n', "after",
         "depends_on", "unknown job 'ghost'"),
    Case("literal-secret", JOB_HEAD + '[jobs.ingest.params]\ntoken = "abc"\n', "ingest", "params.token",
         "token_env"),
    Case("empty-secret-ref", JOB_HEAD + '[jobs.ingest.params]\ntoken_env = ""\n', "ingest",
         "params.token_env", "environment variable"),
    Case("params-rejected", JOB_HEAD + "[jobs.ingest.params]\nrecords = -1\n", "ingest", "params.records",
         "greater than or equal to 0"),
    Case("params-unknown", JOB_HEAD + "[jobs.ingest.params]\nrecordz = 10\n", "ingest", "params.recordz",
         "unknown key (valid keys: records, batch_size, delay_ms,"),
    # issue 15: strict types, no coercion of a user's typo
    Case("interval-quoted", '[jobs.ingest]\ntype = "synthetic"\ninterval_minutes = "5"\n', "ingest",
         "interval_minutes", "valid integer"),
    Case("queue-empty", JOB_HEAD + 'queue = ""\n', "ingest", "queue", "at least 1 character"),
    Case("enabled-string", JOB_HEAD + 'enabled = "yes"\n', "ingest", "enabled", "valid boolean"),
    Case("priority-float", JOB_HEAD + "priority = 1.5\n", "ingest", "priority", "valid integer"),
    Case("params-model-rule", JOB_HEAD + '[jobs.ingest.params]\nstart = "2026-01-05"\nend = "2026-01-01"\n',
         "ingest", "params", "end is before start"),
    Case("params-wrong-type", JOB_HEAD + '[jobs.ingest.params]\nbatch_size = "many"\n', "ingest",
         "params.batch_size", "integer"),
]


@pytest.fixture
def services_env(monkeypatch: pytest.MonkeyPatch, database_url: str, redis_url: str, tmp_path: Path) -> None:
    """The test services, a private data dir, and a guard that fails if a daemon would start."""
    monkeypatch.setenv("BATCHER_DATABASE_URL", database_url)
    monkeypatch.setenv("BATCHER_REDIS_URL", redis_url)
    monkeypatch.setenv("BATCHER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BATCHER_API_PORT", "0")

    async def daemon_must_not_start(config: Any) -> int:
        raise AssertionError("the configuration was accepted and the daemon was about to start")

    monkeypatch.setattr(clicommands, "run_daemon", daemon_must_not_start)


@pytest.mark.usefixtures("services_env")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_file_stops_start_up_with_exit_2(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`batcher run` with this file exits 2 before starting anything, with one stderr line naming the
    file, the job (when the problem is in a job), the key and the reason."""
    path = tmp_path / "batcher.toml"
    path.write_text(case.toml)
    monkeypatch.setenv("BATCHER_CONFIG", str(path))
    code = main(["run"])
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, stderr: {err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    message = lines[0]
    assert str(path) in message, message
    if case.job is not None:
        assert f"job {case.job!r}" in message, message
    elif case.id == "dependency-cycle":
        assert "job 'a'" in message or "job 'b'" in message, message
    if case.key is not None:
        assert f"key {case.key!r}" in message, message
    assert case.reason in message, message
    assert not (tmp_path / "data").exists(), "an embedded server was started for a bad file"


def test_bad_file_starts_no_embedded_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """With no database/Redis URL (the embedded default), a bad file still exits 2 before any embedded
    server is started: the data dir is not even created."""
    for name in ("BATCHER_DATABASE_URL", "DATABASE_URL", "BATCHER_REDIS_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("BATCHER_DATA_DIR", str(data_dir))

    async def daemon_must_not_start(config: Any) -> int:
        raise AssertionError("the configuration was accepted and the daemon was about to start")

    monkeypatch.setattr(clicommands, "run_daemon", daemon_must_not_start)
    path = tmp_path / "batcher.toml"
    path.write_text(JOB_HEAD + "[jobs.ingest.params]\nrecords = -1\n")
    monkeypatch.setenv("BATCHER_CONFIG", str(path))
    assert main(["run"]) == 2
    assert "params.records" in capsys.readouterr().err
    assert not data_dir.exists()


@pytest.mark.usefixtures("services_env")
def test_missing_named_file_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A BATCHER_CONFIG naming a file that does not exist is exit 2 with the path in the message."""
    path = tmp_path / "absent.toml"
    monkeypatch.setenv("BATCHER_CONFIG", str(path))
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "does not exist" in err, err


@pytest.mark.usefixtures("services_env")
def test_literal_secret_is_never_echoed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The rejection of a literal secret names the key, never the value."""
    path = tmp_path / "batcher.toml"
    path.write_text(JOB_HEAD + '[jobs.ingest.params]\ntoken = "s3cr3t-value"\n')
    monkeypatch.setenv("BATCHER_CONFIG", str(path))
    assert main(["run"]) == 2
    captured = capsys.readouterr()
    assert "s3cr3t-value" not in captured.err + captured.out


VALID = """
[daemon]
concurrency = 2

[jobs.every-five]
type = "synthetic"
interval_minutes = 5
[jobs.every-five.params]
records = 0
token_env = "SYNTHETIC_TOKEN"

[jobs.nightly]
type = "synthetic"
cron = "30 2 * * 1-5"
timezone = "Europe/Berlin"

[jobs.after-both]
type = "synthetic"
depends_on = ["every-five", "nightly"]
[jobs.after-both.params]
records = 10
batch_size = 5
"""


def test_valid_file_passes_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file using schedules, a timezone, a secret reference and dependencies loads without error;
    the secret reference is not resolved at load (its variable need not exist)."""
    path = tmp_path / "batcher.toml"
    path.write_text(VALID)
    monkeypatch.setenv("BATCHER_CONFIG", str(path))
    monkeypatch.delenv("SYNTHETIC_TOKEN", raising=False)
    config = app.load_config()
    assert set(config.jobs) == {"every-five", "nightly", "after-both"}
    assert config.jobs["nightly"].cron == "30 2 * * 1-5"
    assert config.jobs["after-both"].depends_on == ("every-five", "nightly")
    assert config.jobs["every-five"].params["token_env"] == "SYNTHETIC_TOKEN"
    assert config.settings.config_path == path


def test_shipped_batcher_toml_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The repository's own batcher.toml passes validation and enables a synthetic job."""
    path = Path(__file__).resolve().parents[2] / "batcher.toml"
    monkeypatch.setenv("BATCHER_CONFIG", str(path))
    config = app.load_config()
    assert any(spec.type == "synthetic" and spec.enabled for spec in config.jobs.values())


@pytest.mark.parametrize("cron", ["0 0 29 2 *", "0 0 31 * *", "0 0 30 2 1", "@yearly"])
def test_rare_but_possible_crons_are_accepted(cron: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14 #13's check refuses only crons that never fire: a leap day, the 31st (only some months),
    Feb 30 OR Mondays (day of month and day of week both set mean OR) and a yearly macro all load."""
    path = tmp_path / "batcher.toml"
    path.write_text(f'[jobs.rare]\ntype = "synthetic"\ncron = "{cron}"\ntimezone = "Europe/Berlin"\n')
    monkeypatch.setenv("BATCHER_CONFIG", str(path))
    assert app.load_config().jobs["rare"].cron == cron
