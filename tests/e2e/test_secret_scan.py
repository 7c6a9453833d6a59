"""The secret scan (issue 20): every job type runs with recognisable secret values, and nothing the project
writes or serves may contain one — raw, URL-encoded or base64-encoded.

Registry-driven: :data:`SCENARIOS` maps each job type to its cases (the fake upstream to start, the params,
the secret values, the expected status). A registered type without a scenario fails the test, so a new
handler must be covered. Every case runs in-process (``run_job_once``, literal secrets, logs captured at
debug level); the first case of each type also runs in one real daemon process with its secrets in the
environment (``*_env`` references), while the test fetches every GET endpoint of the API. Then the logs,
every stored table (runs, run logs, dead letters, checkpoints, job config), the job-history documents, the
API answers and /metrics are scanned.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import io
import json
import logging
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import pytest

from batcher.environ import secret_fields
from batcher.fakes.agent import AgentOptions, FakeAgent
from batcher.fakes.datasync import FakeDataSync
from batcher.fakes.datasync import FakeOptions as DataSyncOptions
from batcher.fakes.dockerhub import TOKEN_PREFIX, FakeDockerHub
from batcher.fakes.github import FakeGitHub
from batcher.fakes.gsc import FakeGsc, GscOptions
from batcher.fakes.hubspot import FakeHubSpot
from batcher.fakes.hubspot import FakeOptions as HubSpotOptions
from batcher.jobhistory import history_document
from batcher.logs import configure_logging
from batcher.registry import load_registry
from batcher.testing import run_job_once, test_settings
from tests.e2e.procs import REPO, Proc, batcher_env, write_config
from tests.polling import exited_early, wait_for


def secret(name: str) -> str:
    """A recognisable secret whose URL-encoded forms differ from it ('+' and '/')."""
    return f"sEcReT-{name}-{uuid.uuid4().hex[:16]}+x/y"


API_TOKEN = secret("api-token")
#: Fast HTTP retries so the 5xx cases end quickly.
RATE_LIMITS = {"datasync:": {"interval_ms": 1, "max_in_interval": 100_000, "burst": 100_000, "max_attempts": 2}}


@dataclass
class Prepared:
    """One case, its fake started: params (no secrets), secret values by field, expected status, and a
    callable listing the tokens the fake issued (access tokens the runtime must keep secret too)."""

    params: dict[str, Any]
    secrets: dict[str, str]
    status: str
    issued: Callable[[], list[str]] = field(default=lambda: [])


Case = Callable[[Any], contextlib.AbstractAsyncContextManager[Prepared]]


@contextlib.asynccontextmanager
async def synthetic_ok(db: Any) -> AsyncIterator[Prepared]:
    yield Prepared({"records": 20, "batch_size": 5, "poison_every": 7, "reject_every": 9},
                   {"token": secret("synthetic")}, "succeeded")


@contextlib.asynccontextmanager
async def synthetic_fails(db: Any) -> AsyncIterator[Prepared]:
    yield Prepared({"records": 20, "batch_size": 5, "fail_at_batch": 2, "fail_mode": "permanent"},
                   {"token": secret("synthetic-fail")}, "failed")


def _datasync(status: str, *, accept: bool = True, **options: Any) -> Case:
    @contextlib.asynccontextmanager
    async def case(db: Any) -> AsyncIterator[Prepared]:
        key = secret("datasync")
        fake_key = key if accept else secret("datasync-other")
        async with FakeDataSync(DataSyncOptions(events=30, invalid_every=7, api_key=fake_key, **options)) as fake:
            yield Prepared({"base_url": fake.url, "batch_size": 10}, {"api_key": key}, status)

    return case


def _gsc(status: str, **options: Any) -> Case:
    @contextlib.asynccontextmanager
    async def case(db: Any) -> AsyncIterator[Prepared]:
        cs, rt = secret("gsc-client"), secret("gsc-refresh")
        opts = GscOptions(client_secret=cs, refresh_token=rt, days_with_data=3, rows_per_day=2, **options)
        async with FakeGsc(opts) as fake:
            params = {"base_url": fake.url, "token_url": fake.token_url, "client_id": "client-1",
                      "sites": ["https://a.example/"], "initial_days": 3}
            yield Prepared(params, {"client_secret": cs, "refresh_token": rt}, status, lambda: list(fake.issued))

    return case


def _hubspot(status: str, *, oauth: bool, accept: bool = True, **options: Any) -> Case:
    @contextlib.asynccontextmanager
    async def case(db: Any) -> AsyncIterator[Prepared]:
        access, cs, rt = secret("hubspot-access"), secret("hubspot-client"), secret("hubspot-refresh")
        opts = HubSpotOptions(records={"contacts": 5}, access_token=access, client_secret=cs,
                              refresh_token=rt if accept else secret("hubspot-other"), **options)
        async with FakeHubSpot(opts) as fake:
            params: dict[str, Any] = {"base_url": fake.url, "objects": ["contacts"], "settle_seconds": 0}
            if oauth:
                params.update(client_id=opts.client_id, token_url=fake.url + "/oauth/v1/token")
                secrets = {"client_secret": cs, "refresh_token": rt}
            else:
                secrets = {"access_token": access if accept else secret("hubspot-wrong")}
            # the fake issues ``access`` for a refresh token it accepts (none for a refused one)
            yield Prepared(params, secrets, status,
                           lambda: [access] if oauth and accept and fake.token_requests else [])

    return case


def _dockerhub(status: str, *, accept: bool = True) -> Case:
    @contextlib.asynccontextmanager
    async def case(db: Any) -> AsyncIterator[Prepared]:
        token = secret("dockerhub")
        repos = {"library/nginx": {"latest": "sha256:a", "1.27": "sha256:b"}}
        async with FakeDockerHub(repos, username="alice", secret=token if accept else secret("dh-other")) as hub:
            yield Prepared({"base_url": hub.url, "repositories": ["library/nginx"], "username": "alice"},
                           {"access_token": token}, status,
                           lambda: [f"{TOKEN_PREFIX}{i}" for i in range(1, hub.tokens_issued + 1)])

    return case


@contextlib.asynccontextmanager
async def tracked_apps_ok(db: Any) -> AsyncIterator[Prepared]:
    token = secret("github")
    await db.execute("INSERT INTO tracked_apps (name, source, current_version) VALUES ('scan-app', "
                     "'github:acme/app', 'v1.0.0') ON CONFLICT DO NOTHING")
    async with FakeGitHub({"acme/app": [("v1.2.0", False)]}, token=token) as gh:
        yield Prepared({"github_base": gh.url}, {"github_token": token}, "succeeded")


@contextlib.asynccontextmanager
async def usage_ok(db: Any) -> AsyncIterator[Prepared]:
    yield Prepared({"date": "2025-11-01"}, {}, "succeeded")  # no secret param: its run must be clean too


def _agent(status: str, *, accept: bool = True) -> Case:
    @contextlib.asynccontextmanager
    async def case(db: Any) -> AsyncIterator[Prepared]:
        key = secret("agent")
        await db.execute("INSERT INTO system_users (user_id, tenant_id, active) VALUES ('scan-u1', 'scan-t', true) "
                         "ON CONFLICT DO NOTHING")
        async with FakeAgent(AgentOptions(api_key=key if accept else secret("agent-other"))) as fake:
            yield Prepared({"base_url": fake.url, "batch_type": "INDIVIDUAL_USERS", "tenant_id": "scan-t",
                            "retry_base_seconds": 0.0}, {"api_key": key}, status)

    return case


#: job type → cases; the first case of each type also runs in the daemon. A new handler needs an entry.
SCENARIOS: dict[str, list[tuple[str, Case]]] = {
    "synthetic": [("ok", synthetic_ok), ("permanent failure", synthetic_fails)],
    "datasync": [("ok", _datasync("succeeded")), ("401 invalid key", _datasync("failed", accept=False)),
                 ("500 echoing the Authorization header", _datasync("failed", echo_auth_next=100)),
                 ("400 echoing the key", _datasync("failed", echo_auth_next=1, echo_auth_status=400))],
    "usage_aggregation": [("ok", usage_ok)],
    "gsc": [("ok", _gsc("succeeded", token_ttl_requests=3)), ("invalid_grant", _gsc("failed", revoked=True))],
    "hubspot": [("access token", _hubspot("succeeded", oauth=False)),
                ("oauth refresh", _hubspot("succeeded", oauth=True)),
                ("401 invalid token", _hubspot("failed", oauth=False, accept=False)),
                ("oauth invalid_grant", _hubspot("failed", oauth=True, accept=False))],
    "docker-hub-pull": [("ok", _dockerhub("succeeded")), ("401 bad credentials", _dockerhub("failed", accept=False))],
    "tracked-apps-check": [("ok", tracked_apps_ok)],
    "agent_batch": [("ok", _agent("succeeded")), ("401 invalid key", _agent("failed", accept=False))],
}


def test_every_job_type_has_a_secret_scan_scenario() -> None:
    """Every registered job type has a scenario here, and its first case gives a value for every secret
    field of the type's params — so a new handler (or a new secret param) cannot skip the scan."""
    registry = load_registry()
    missing = [t for t in registry if t not in SCENARIOS]
    assert not missing, "".join(f"add a secret-scan scenario for job type {t} (tests/e2e/test_secret_scan.py)\n"
                                for t in missing)


async def test_every_scenario_covers_every_secret_field(db: Any) -> None:
    """The cases of a type together set each of its ``Secret`` params (so none goes unscanned)."""
    registry = load_registry()
    for job_type, cases in SCENARIOS.items():
        if job_type not in registry:
            continue
        covered: set[str] = set()
        for _, case in cases:
            async with case(db) as prepared:
                covered |= set(prepared.secrets)
        missing = secret_fields(registry[job_type].Params) - covered
        assert not missing, f"the secret-scan scenario of {job_type} sets no value for {sorted(missing)}"


# ----------------------------------------------------------------------------------------------- scanning


def forms(value: str) -> set[str]:
    """The raw value and the encodings it could hide in."""
    raw = value.encode()
    return {value, quote(value, safe=""), quote(value), quote_plus(value), base64.b64encode(raw).decode(),
            base64.urlsafe_b64encode(raw).decode(), json.dumps(value)[1:-1]}


def leaks(secrets: Iterable[str], texts: dict[str, str]) -> list[str]:
    found = []
    for value in secrets:
        for form in forms(value):
            for where, text in texts.items():
                if form in text:
                    at = text.index(form)
                    found.append(f"{value!r} (as {form!r}) in {where}: …{text[max(0, at - 160):at + 60]}…")
    return found


async def stored_texts(pool: Any) -> dict[str, str]:
    """Every row of every table the runtime writes for runs, as text; and the job-history documents."""
    texts = {}
    for table in ("batch_runs", "run_logs", "dead_letters", "checkpoints", "batch_config", "workers"):
        rows = await pool.fetch(f"SELECT t::text AS row FROM {table} t")
        texts[table] = "\n".join(r["row"] for r in rows)
    runs = await pool.fetch("SELECT * FROM batch_runs")
    texts["job history"] = "\n".join(json.dumps(history_document(dict(r)), default=str) for r in runs)
    return texts


# --------------------------------------------------------------------------------------------- in-process


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower())


async def run_in_process(pool: Any, database_url: str, redis_url: str, stream: io.StringIO,
                         secrets: set[str]) -> None:
    configure_logging("json", "debug", stream=stream)
    for job_type, cases in SCENARIOS.items():
        for label, case in cases:
            async with case(pool) as prepared:
                settings = test_settings(database_url, redis_url, rate_limits=RATE_LIMITS)
                summary = await run_job_once(settings, job_type, prepared.params, literal_secrets=prepared.secrets,
                                             job_name=f"scan-{job_type}-{slug(label)}")
                used = set(prepared.secrets.values()) | set(prepared.issued())
            assert summary["status"] == prepared.status, (job_type, label, summary)
            secrets |= used
            # a traceback carrying a secret the run used or was issued (as an exception message or a
            # library's log line might) is masked too: the runtime registered every one of them
            for value in used:
                try:
                    raise RuntimeError(f"upstream said: bad credential {value} (url-encoded {quote(value, safe='')})")
                except RuntimeError:
                    logging.getLogger("aiohttp.client").exception("scan_probe")
    logging.getLogger().handlers[-1].flush()


# ------------------------------------------------------------------------------------------------- daemon


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env_name(job_type: str, field_name: str) -> str:
    return "SCAN_" + re.sub(r"[^A-Z0-9]", "_", f"{job_type}_{field_name}".upper())


async def wait_until(check: Callable[[], Any], timeout: float, what: str, proc: Proc) -> Any:
    """Poll ``check`` (sync or async) until truthy; fails at once when the daemon died."""
    async def checked() -> Any:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if not result:
            exited_early(proc.popen.poll(), what, proc.tail)
        return result

    return await wait_for(checked, timeout, 0.05, what=what, details=proc.tail)


async def api_texts(http: aiohttp.ClientSession, base: str, pool: Any) -> dict[str, str]:
    """Every GET endpoint of the OpenAPI document (path parameters filled with every run id and job name),
    the dashboard page and /metrics, as text."""
    async with http.get(base + "/api/openapi.json") as resp:
        doc = await resp.json()
    mine = "job_name LIKE 'scan-%' OR job_name LIKE 'daemon-%'"  # (other tests' rows share the database)
    runs = [str(r) for r in await pool.fetchval(f"SELECT array_agg(id) FROM batch_runs WHERE {mine}")]
    jobs = list(await pool.fetchval(f"SELECT array_agg(job_name) FROM batch_config WHERE {mine}"))
    urls = ["/", "/metrics"]
    for path, ops in doc["paths"].items():
        if "get" not in ops:
            continue
        names = re.findall(r"{(\w+)}", path)
        if not names:
            urls.append(path)
            continue
        values = runs if names == ["id"] else jobs
        urls += [re.sub(r"{\w+}", v, path) for v in values]
    urls += ["/api/batch/runs?limit=500", "/api/batch/dead-letters?limit=500"]
    texts = {}
    for url in urls:
        async with http.get(base + url) as resp:
            texts[f"GET {url} ({resp.status})"] = await resp.text()
    return texts


async def run_daemon(tmp_path: Path, pool: Any, database_url: str, redis_url: str,
                     stack: contextlib.AsyncExitStack, procs: list[Proc], secrets: set[str],
                     issued: list[Callable[[], list[str]]]) -> dict[str, str]:
    jobs: dict[str, dict[str, Any]] = {}
    env_secrets: dict[str, str] = {}
    for job_type, cases in SCENARIOS.items():
        prepared = await stack.enter_async_context(cases[0][1](pool))
        params = dict(prepared.params)
        for name, value in prepared.secrets.items():
            params[f"{name}_env"] = var = _env_name(job_type, name)
            env_secrets[var] = value
        if job_type == "synthetic":
            params.update(delay_ms=150, records=30, batch_size=3)  # still running while the API is read
        jobs[f"daemon-{job_type}"] = {"type": job_type, "enabled": False, "max_retries": 0, "params": params}
        secrets |= set(prepared.secrets.values())
        issued.append(prepared.issued)
    # the env-resolved key echoed in a 400's body (the excerpt goes into the run's errors)
    echo = await stack.enter_async_context(FakeDataSync(DataSyncOptions(echo_auth_next=100, echo_auth_status=400)))
    jobs["daemon-datasync-echo"] = {"type": "datasync", "enabled": False, "max_retries": 0,
                                    "params": {**jobs["daemon-datasync"]["params"], "base_url": echo.url}}
    config = write_config(tmp_path / "batcher.toml", jobs)
    with config.open("a") as f:
        f.write('[rate_limits."datasync:"]\ninterval_ms = 1\nmax_in_interval = 100000\nburst = 100000\n'
                'max_attempts = 2\n')
    port = _free_port()
    env = batcher_env(database_url, redis_url, config, tmp_path / "data", BATCHER_API_PORT=str(port),
                      BATCHER_API_TOKEN=API_TOKEN, BATCHER_LOG_LEVEL="debug", **env_secrets)
    daemon = Proc(["run"], env, tmp_path / "daemon.log")
    procs.append(daemon)
    base = f"http://127.0.0.1:{port}"
    await wait_until(lambda: any(e.get("event") == "api_listening" for e in daemon.events()), 60,
                     "api_listening", daemon)
    since = await pool.fetchval("SELECT now()")
    texts: dict[str, str] = {}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_TOKEN}"}) as http:
        for name in jobs:
            async with http.post(base + "/api/batch/trigger", json={"jobName": name}) as resp:
                assert resp.status == 200, await resp.text()
        # a literal secret in a trigger's params is refused, and the refusal does not echo it
        literal = secret("literal-in-api")
        secrets.add(literal)
        async with http.post(base + "/api/batch/trigger",
                             json={"jobName": "daemon-datasync", "params": {"api_key": literal}}) as resp:
            assert 400 <= resp.status < 500, resp.status
            texts["POST /api/batch/trigger with a literal secret"] = await resp.text()
        await wait_until(lambda: pool.fetchval("SELECT count(*) > 0 FROM batch_runs WHERE status = 'running' "
                                               "AND job_name = 'daemon-synthetic'"), 30, "synthetic running", daemon)
        texts.update({f"{k} [while running]": v for k, v in (await api_texts(http, base, pool)).items()})

        async def finished() -> bool:
            return bool(await pool.fetchval(
                "SELECT count(DISTINCT job_name) = $2 FROM batch_runs WHERE queued_at >= $1 "
                "AND status IN ('succeeded', 'failed') AND job_name LIKE 'daemon-%'", since, len(jobs)))

        await wait_until(finished, 45, "every daemon job finished", daemon)
        texts.update(await api_texts(http, base, pool))
    rows = await pool.fetch("SELECT job_name, status, errors FROM batch_runs WHERE queued_at >= $1 "
                            "AND job_name LIKE 'daemon-%'", since)
    statuses = {r["job_name"]: r["status"] for r in rows}
    errors = {r["job_name"]: r["errors"] for r in rows}
    expected = {f"daemon-{t}": cases[0][1] for t, cases in SCENARIOS.items()}
    assert statuses.pop("daemon-datasync-echo") == "failed", statuses
    assert all(s == "succeeded" for s in statuses.values()) and set(statuses) == set(expected), errors
    assert daemon.terminate_and_wait(30) == 0, daemon.tail()
    texts["daemon stderr"] = daemon.log_path.read_text(errors="replace")
    return texts


async def run_cli(tmp_path: Path, database_url: str, redis_url: str, secrets: set[str]) -> dict[str, str]:
    """``batcher run-job datasync --param api_key=…`` as a process (debug logs, BATCHER_DEBUG) against a
    fake answering 500s that echo the key: its stdout and stderr."""
    key = secret("cli-datasync")
    secrets.add(key)
    config = tmp_path / "cli.toml"
    config.write_text('[rate_limits."datasync:"]\ninterval_ms = 1\nmax_in_interval = 100000\nburst = 100000\n'
                      'max_attempts = 2\n')
    env = batcher_env(database_url, redis_url, config, tmp_path / "cli-data", BATCHER_LOG_LEVEL="debug",
                      BATCHER_DEBUG="1")
    async with FakeDataSync(DataSyncOptions(api_key=key, echo_auth_next=100)) as fake:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "batcher", "run-job", "datasync", "--param", f"base_url={fake.url}",
            "--param", f"api_key={key}", env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and b'"failed"' in out, (out, err[-2000:])
    return {"run-job stdout": out.decode(errors="replace"), "run-job stderr": err.decode(errors="replace")}


@pytest.fixture
async def scan_db(db: Any, redis_db: Any) -> Any:
    await db.execute("TRUNCATE tracked_apps")
    return db


async def test_no_secret_in_anything_written_or_served(scan_db: Any, database_url: str, redis_url: str,
                                                        tmp_path: Path, procs: list[Proc]) -> None:
    """Every case of :data:`SCENARIOS` in-process (literal secrets) and the first of each type in a real
    daemon (secrets from the environment, the API read while a run is running and after): no secret value,
    no issued access token and not the API token appears — raw, URL-encoded, JSON-escaped or base64 — in the
    logs (in-process and the daemon's stderr), batch_runs, run_logs, dead_letters, checkpoints,
    batch_config, workers, the job-history documents, any GET endpoint of the API, the dashboard or
    /metrics."""
    secrets: set[str] = {API_TOKEN}
    issued: list[Callable[[], list[str]]] = []
    stream = io.StringIO()
    await run_in_process(scan_db, database_url, redis_url, stream, secrets)
    texts = {"in-process logs": stream.getvalue(), **await run_cli(tmp_path, database_url, redis_url, secrets)}
    async with contextlib.AsyncExitStack() as stack:
        texts.update(await run_daemon(tmp_path, scan_db, database_url, redis_url, stack, procs, secrets, issued))
        for tokens in issued:
            secrets |= set(tokens())
    texts.update(await stored_texts(scan_db))
    served = [k for k in texts if k.startswith("GET ")]
    for page in ("/api/apps", "/api/handlers", "/metrics", "/api/batch/runs/", "/api/batch/dead-letters"):
        assert any(page in k and "(200)" in k for k in served), (page, served)
    assert "scan_probe" in texts["in-process logs"] and "run_finished" in texts["daemon stderr"]
    found = leaks(secrets, texts)
    assert not found, f"{len(found)} leaks:\n" + "\n".join(found[:20])
