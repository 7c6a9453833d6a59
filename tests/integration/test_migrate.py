"""Schema migrations against real PostgreSQL (DESIGN §4, issue 3 acceptance).

Each test creates its own fresh database on the session's server and drops it afterwards. Proven here:
``store.migrate`` and ``batcher migrate`` run twice, and concurrently (connections and processes), leave
one correct schema; a database newer than the code is refused by ``store.migrate``, ``batcher migrate``
and ``batcher run``; numbered migrations are applied in order, once, atomically.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from batcher import store
from batcher.cli import main
from batcher.errors import SchemaTooNewError

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
CORE_TABLES = {"batch_config", "batch_runs", "run_logs", "workers", "checkpoints", "dead_letters",
               "synthetic_records", "schema_migrations"}


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture
def fresh_db(database_url: str) -> Iterator[str]:
    """An empty database (no schema at all) on the session's server, dropped after the test."""
    name = f"batcher_mig_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield _with_database(database_url, name)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


async def fingerprint(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every column, index and constraint of the public schema, plus the recorded versions."""
    conn = await asyncpg.connect(url)
    try:
        columns = await conn.fetch(
            "SELECT table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2")
        indexes = await conn.fetch(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2")
        constraints = await conn.fetch(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2")
        versions = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return {"columns": [tuple(r) for r in columns], "indexes": [tuple(r) for r in indexes],
            "constraints": [tuple(r) for r in constraints], "versions": [tuple(r) for r in versions]}


def expected_versions() -> list[int]:
    """1 (sql/schema.sql) and every numbered file of sql/migrations/, each exactly once."""
    return [1, *sorted(int(p.name[:4]) for p in store.MIGRATIONS_DIR.iterdir()
                       if store._MIGRATION_NAME.match(p.name))]


def assert_correct_schema(fp: dict[str, list[tuple[Any, ...]]]) -> None:
    """The core tables of DESIGN §4, the partial unique indexes, and one row per applied version."""
    tables = {c[0] for c in fp["columns"]}
    assert tables >= CORE_TABLES, f"missing tables: {CORE_TABLES - tables}"
    indexes = {i[1]: i[2] for i in fp["indexes"]}
    assert "UNIQUE" in indexes["batch_runs_one_per_occurrence"]
    assert "WHERE (trigger = 'schedule'::text)" in indexes["batch_runs_one_per_occurrence"]
    assert "WHERE (status = 'running'::text)" in indexes["batch_runs_one_running"]
    assert [v for v, _ in fp["versions"]] == expected_versions()
    assert fp["versions"][0] == (1, "schema")


def cli(args: list[str], monkeypatch: pytest.MonkeyPatch, db_url: str, redis_url: str,
        tmp_path: Path) -> None:
    """Point the in-process CLI at ``db_url`` with an empty config and a private data dir."""
    config = tmp_path / "empty.toml"
    config.write_text("")
    monkeypatch.setenv("BATCHER_CONFIG", str(config))
    monkeypatch.setenv("BATCHER_DATABASE_URL", db_url)
    monkeypatch.setenv("BATCHER_REDIS_URL", redis_url)
    monkeypatch.setenv("BATCHER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BATCHER_API_PORT", "0")
    monkeypatch.setenv("BATCHER_LOG_FORMAT", "json")


# --------------------------------------------------------------------------- twice, concurrently

OLD_SCHEMA_BUG = (
    "BUG batcher/clicommands.py cmd_migrate: it opens services with migrate=False, so app.open_services "
    "runs _check_schema first, which refuses any database older than the code ('run `batcher migrate` "
    "first'); `batcher migrate` can therefore never migrate a fresh or outdated database. stderr: ")

def test_migrate_twice_leaves_one_correct_schema(fresh_db: str) -> None:
    """The second store.migrate applies nothing and changes nothing."""
    async def scenario() -> tuple[list[str], list[str]]:
        conn = await store.connect(fresh_db)
        try:
            first = await store.migrate(conn)
            second = await store.migrate(conn)
            assert await store.schema_version(conn) == store.code_schema_version()
        finally:
            await conn.close()
        return first, second

    before = run_async(scenario())
    first, second = before
    assert first[0] == "0001_schema" and len(first) == len(expected_versions())
    assert second == []
    fp = run_async(fingerprint(fresh_db))
    assert_correct_schema(fp)


def test_cli_migrate_twice(fresh_db: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """`batcher migrate` twice: exit 0 both times; the first reports what it applied, the second
    nothing; both print the same schema version as their last stdout line; the schema is correct."""
    cli([], monkeypatch, fresh_db, redis_url, tmp_path)
    reports = []
    for _ in range(2):
        code = main(["migrate"])
        captured = capsys.readouterr()
        assert code == 0, OLD_SCHEMA_BUG + captured.err
        out = captured.out.strip().splitlines()
        reports.append(json.loads(out[-1]))
    assert reports[0]["applied"][0] == "0001_schema"
    assert reports[1]["applied"] == []
    assert reports[0]["schema_version"] == reports[1]["schema_version"] == store.code_schema_version()
    assert_correct_schema(run_async(fingerprint(fresh_db)))
    assert not (tmp_path / "data" / "postgres").exists(), "an embedded PostgreSQL started despite the URL"


def test_concurrent_migrations_leave_one_correct_schema(fresh_db: str, database_url: str) -> None:
    """Four connections migrating a fresh database at the same moment: no error, exactly one applies
    the schema, and the result equals a database migrated alone (the session's reference database is
    not used: other tests add tables to it)."""
    async def scenario() -> list[list[str]]:
        conns = [await store.connect(fresh_db) for _ in range(4)]
        try:
            start = asyncio.Event()

            async def one(conn: asyncpg.Connection) -> list[str]:
                await start.wait()
                return await store.migrate(conn)

            tasks = [asyncio.create_task(one(c)) for c in conns]
            await asyncio.sleep(0)  # one loop step, not a wait: every task reaches start.wait() to go at once
            start.set()
            return list(await asyncio.gather(*tasks))
        finally:
            for c in conns:
                await c.close()

    results = run_async(scenario())
    appliers = [r for r in results if r]
    assert len(appliers) == 1, f"expected exactly one migrator to apply the schema: {results}"
    assert appliers[0][0] == "0001_schema"
    fp = run_async(fingerprint(fresh_db))
    assert_correct_schema(fp)

    # Same schema as a database migrated by a single connection.
    name = f"batcher_mig_ref_{uuid.uuid4().hex[:8]}"
    ref = _with_database(database_url, name)

    async def reference() -> dict[str, list[tuple[Any, ...]]]:
        admin = await asyncpg.connect(database_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            conn = await store.connect(ref)
            try:
                await store.migrate(conn)
            finally:
                await conn.close()
            return await fingerprint(ref)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()

    ref_fp = run_async(reference())
    assert {k: v for k, v in fp.items() if k != "versions"} == \
        {k: v for k, v in ref_fp.items() if k != "versions"}
    assert [v for v, _ in fp["versions"]] == [v for v, _ in ref_fp["versions"]]


def test_concurrent_migrate_processes(fresh_db: str, redis_url: str, tmp_path: Path) -> None:
    """Three `python -m batcher migrate` processes started together on a fresh database all exit 0,
    exactly one of them applies the schema, and the schema is correct."""
    config = tmp_path / "empty.toml"
    config.write_text("")
    env = {"PATH": "/usr/bin:/bin", "BATCHER_CONFIG": str(config), "BATCHER_DATABASE_URL": fresh_db,
           "BATCHER_REDIS_URL": redis_url, "BATCHER_DATA_DIR": str(tmp_path / "data"),
           "BATCHER_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "batcher", "migrate"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=30)
            assert p.returncode == 0, OLD_SCHEMA_BUG + f"exit {p.returncode}: {err}"
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    appliers = [o for o in outputs if o["applied"]]
    assert len(appliers) == 1, outputs
    assert all(o["schema_version"] == store.code_schema_version() for o in outputs), outputs
    assert_correct_schema(run_async(fingerprint(fresh_db)))


# --------------------------------------------------------------------------- newer than the code

async def _make_too_new(url: str) -> int:
    conn = await store.connect(url)
    try:
        await store.migrate(conn)
        future = store.code_schema_version() + 1
        await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_the_future')",
                           future)
        return future
    finally:
        await conn.close()


def test_store_migrate_refuses_a_newer_schema(fresh_db: str) -> None:
    """store.migrate raises SchemaTooNewError naming both versions, and changes nothing."""
    future = run_async(_make_too_new(fresh_db))
    before = run_async(fingerprint(fresh_db))

    async def attempt() -> None:
        conn = await store.connect(fresh_db)
        try:
            await store.migrate(conn)
        finally:
            await conn.close()

    with pytest.raises(SchemaTooNewError) as info:
        run_async(attempt())
    message = str(info.value)
    assert f"version {future}" in message and "newer than this batcher" in message, message
    assert f"knows up to {store.code_schema_version()}" in message, message
    assert run_async(fingerprint(fresh_db)) == before


@pytest.mark.parametrize("command", ["migrate", "run", "jobs"])
def test_cli_refuses_a_newer_schema(command: str, fresh_db: str, redis_url: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`batcher migrate`, `batcher run` (start-up) and `batcher jobs` against a newer schema exit
    non-zero with one clear line on stderr, without starting anything."""
    future = run_async(_make_too_new(fresh_db))
    cli([], monkeypatch, fresh_db, redis_url, tmp_path)
    started = time.monotonic()
    code = main([command])
    captured = capsys.readouterr()
    assert code != 0, f"`batcher {command}` accepted a schema newer than the code: {captured}"
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("batcher:")]
    assert len(lines) == 1, captured.err
    assert f"version {future}" in lines[0] and "newer than this batcher" in lines[0], lines[0]
    assert time.monotonic() - started < 15
    assert "daemon_ready" not in captured.err


# --------------------------------------------------------------------------- numbered migrations

def _write(dir_: Path, files: dict[str, str]) -> None:
    for name, sql in files.items():
        (dir_ / name).write_text(sql)


def test_numbered_migrations_apply_in_order_once(fresh_db: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Files NNNN_name.sql are applied after schema.sql in numeric order (0010 after 0003), each once and
    recorded; non-migration files are ignored; a later file is applied by the next run alone."""
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    _write(migrations, {
        "0010_c.sql": "INSERT INTO mig_probe (step) VALUES ('0010');",
        "0002_a.sql": "CREATE TABLE mig_probe (n serial PRIMARY KEY, step text NOT NULL);\n"
                      "INSERT INTO mig_probe (step) VALUES ('0002');",
        "0003_b.sql": "ALTER TABLE mig_probe ADD COLUMN note text;\n"
                      "INSERT INTO mig_probe (step, note) VALUES ('0003', 'needs 0002');",
        "README.md": "not a migration",
    })
    monkeypatch.setattr(store, "MIGRATIONS_DIR", migrations)
    assert store.code_schema_version() == 10

    async def migrate() -> list[str]:
        conn = await store.connect(fresh_db)
        try:
            return await store.migrate(conn)
        finally:
            await conn.close()

    async def probe() -> tuple[list[str], list[tuple[int, str]]]:
        conn = await asyncpg.connect(fresh_db)
        try:
            steps = [r["step"] for r in await conn.fetch("SELECT step FROM mig_probe ORDER BY n")]
            versions = [tuple(r) for r in await conn.fetch(
                "SELECT version, name FROM schema_migrations ORDER BY version")]
            return steps, versions
        finally:
            await conn.close()

    assert run_async(migrate()) == ["0001_schema", "0002_a", "0003_b", "0010_c"]
    assert run_async(probe()) == (["0002", "0003", "0010"],
                                  [(1, "schema"), (2, "0002_a"), (3, "0003_b"), (10, "0010_c")])
    assert run_async(migrate()) == []

    _write(migrations, {"0011_d.sql": "INSERT INTO mig_probe (step) VALUES ('0011');"})
    assert run_async(migrate()) == ["0011_d"]
    steps, versions = run_async(probe())
    assert steps == ["0002", "0003", "0010", "0011"]
    assert versions[-1] == (11, "0011_d")


def test_failing_migration_applies_nothing(fresh_db: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails rolls back the whole run (schema.sql and earlier files included), so the
    next attempt starts from the same state."""
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    _write(migrations, {"0002_ok.sql": "CREATE TABLE mig_ok (id int);",
                        "0003_broken.sql": "CREATE TABLE mig_broken (id int;"})
    monkeypatch.setattr(store, "MIGRATIONS_DIR", migrations)

    async def attempt() -> tuple[int, bool]:
        conn = await store.connect(fresh_db)
        try:
            with pytest.raises(asyncpg.PostgresSyntaxError):
                await store.migrate(conn)
            exists = await conn.fetchval("SELECT to_regclass('mig_ok') IS NOT NULL OR "
                                         "to_regclass('batch_config') IS NOT NULL")
            return await store.schema_version(conn), exists
        finally:
            await conn.close()

    assert run_async(attempt()) == (0, False)
