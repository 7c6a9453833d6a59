"""Issue 14 defect 15: a plain (non-editable) install from the built wheel runs with no checkout present.

The wheel is built from a copy of the source tree (so no stale ``build/`` of the checkout leaks into it)
with ``pip wheel --no-build-isolation`` (offline: the dev venv's setuptools), installed with ``--no-deps``
into a fresh venv outside the checkout. That venv finds its third-party dependencies through plain
directory lines in a ``.pth`` file naming the running venv's site-packages directories: plain lines add a
directory to ``sys.path`` without processing the ``.pth`` files inside it, so the editable-install finder
of the shared venv (which maps ``batcher`` to a checkout) never runs there.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.e2e.procs import REPO
from tests.polling import exited_early, wait_for_sync

_SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".batcher*",
                               ".*_cache", "test-artifacts", "tests", "bench")

SHIPPED = ("batcher/sql/schema.sql", "batcher/sql/queries.sql", "batcher/sql/migrations/0002_merchant_usage.sql",
           "handlers/__init__.py", "handlers/synthetic.py", "batcher/static/index.html", "batcher/static/app.js",
           "batcher/fakes/datasync.py", "batcher/py.typed")


def _admin(url: str, sql: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.fixture
def scratch_db(database_url: str) -> Iterator[str]:
    """An empty throw-away database on the session's server, dropped after the test."""
    name = f"batcher_wheel_{uuid.uuid4().hex[:10]}"
    _admin(database_url, f'CREATE DATABASE "{name}"')
    parts = urlsplit(database_url)
    yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    _admin(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=_SKIP)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp / "dist"), str(src)], check=True, cwd=tmp, capture_output=True)
    shutil.rmtree(src)
    (wheel,) = (tmp / "dist").glob("batcher-*.whl")
    return wheel


def _make_venv(tmp: Path, wheel: Path) -> Path:
    """A venv holding only the wheel; third-party packages from the running venv's site-packages."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    deps = [p for p in sys.path if p.endswith("site-packages")]  # may lie under the checkout (its .venv)
    (site / "zz_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    return venv


def _env(db_url: str, redis_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BATCHER_", "PYTHON", "VIRTUAL_ENV")) and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"BATCHER_DATABASE_URL": db_url, "BATCHER_REDIS_URL": redis_url, "BATCHER_DATA_DIR": str(data_dir),
                "BATCHER_LOG_FORMAT": "json", "BATCHER_API_PORT": "0", "BATCHER_SHUTDOWN_GRACE": "1",
                "PYTHONUNBUFFERED": "1"})
    return env


def _run(venv: Path, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(venv / "bin" / "batcher"), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"batcher {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def _count(url: str, sql: str) -> int:
    async def go() -> int:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return int(await conn.fetchval(sql))
        finally:
            await conn.close()

    return asyncio.run(go())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(port: int, daemon: subprocess.Popen[bytes], timeout: float) -> None:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        exited_early(daemon.poll(), "/readyz answered 200")
        return False

    wait_for_sync(ready, timeout, 0.1, what="/readyz 200")


def test_plain_pip_install_runs_without_a_checkout(tmp_path: Path, scratch_db: str, redis_url: str) -> None:
    """Defect 15: the wheel ships all SQL (schema, migrations, queries), the handlers package and the
    dashboard's static files; installed into a fresh venv (imports resolve there, not to the checkout),
    ``batcher --version`` (the wheel's version), ``batcher migrate``, ``batcher run-job synthetic --param
    records=5`` and ``batcher run`` (up to /readyz and the dashboard, then SIGTERM: exit 0) all work from a
    directory outside the checkout."""
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for wanted in SHIPPED:
        assert wanted in names, f"{wanted} missing from {wheel.name}"
    venv = _make_venv(tmp_path, wheel)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = _env(scratch_db, redis_url, work / "data")

    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import json, sys, batcher, handlers; print(json.dumps([batcher.__file__, "
                            "handlers.__file__, sys.path]))"], env=env, cwd=work, capture_output=True, text=True,
                           check=True)
    batcher_file, handlers_file, path = json.loads(where.stdout)
    assert Path(batcher_file).is_relative_to(venv) and Path(handlers_file).is_relative_to(venv)
    others = [p for p in path if p and not Path(p).is_relative_to(venv)]
    assert not [p for p in others if (Path(p) / "batcher").exists() or (Path(p) / "handlers").exists()], path

    assert _run(venv, ["--version"], env, work).stdout == f"batcher {wheel.name.split('-')[1]}\n"  # the wheel's
    _run(venv, ["migrate"], env, work)
    assert _count(scratch_db, "SELECT count(*) FROM schema_migrations") >= 5
    _run(venv, ["run-job", "synthetic", "--param", "records=5"], env, work)
    assert _count(scratch_db, "SELECT count(*) FROM synthetic_records") == 5
    assert _count(scratch_db, "SELECT count(*) FROM batch_runs WHERE status = 'succeeded'") == 1

    log, port = tmp_path / "daemon.log", _free_port()
    with log.open("wb") as err:
        daemon = subprocess.Popen([str(venv / "bin" / "batcher"), "run"], env={**env, "BATCHER_API_PORT": str(port)},
                                  cwd=work,
                                  stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        _wait_ready(port, daemon, 60)
        for page in ("/", "/static/app.js"):  # the dashboard is served from the installed package
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{page}", timeout=5) as resp:
                assert resp.status == 200 and resp.read(), page
        os.kill(daemon.pid, signal.SIGTERM)
        assert daemon.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(10)
