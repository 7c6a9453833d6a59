"""The dashboard in a real browser (issue 11 acceptance): Playwright drives Debian's Chromium headless
against a real daemon subprocess (test PostgreSQL and Redis, the API on a free port with a token).

The page loads without console errors; triggering a slow synthetic job asks for the token once, shows a
progress bar under "Running now" (and "running" as the job's last result, even with a skipped occurrence
recorded after it), a records-over-time chart in the running run's details, then a succeeded run whose
logs open in the run's details; pausing a job shows it paused; every job with runs has a chart of its
last runs. A read-only daemon (no token) shows a banner and disabled change buttons with a tooltip, and
never asks for a token. Screenshots go to ``test-artifacts/`` (``dashboard.png``, ``run-details.png``,
``run-records-chart.png``, ``dashboard-read-only.png``, ...).

Chromium is ``/usr/bin/chromium`` from Debian (``make deps-browser``), never ``playwright install``. Every
wait is Playwright's auto-waiting ``expect`` with a timeout, or a poll with a deadline.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import Browser, async_playwright, expect

from batcher.store import Q
from tests.e2e.procs import REPO, Proc, batcher_env, write_config
from tests.polling import exited_early, wait_for_sync

pytestmark = pytest.mark.timeout(90)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
TOKEN = "dashboard-test-token-7c1e"
JOBS: dict[str, dict[str, Any]] = {
    # Manual only (disabled: not scheduled); ~40 batches of 150 ms, so its progress shows for a few seconds.
    "slow-import": {"type": "synthetic", "enabled": False, "interval_minutes": 60,
                    "params": {"records": 400, "batch_size": 10, "delay_ms": 150}},
    # Scheduled: due at once, so the page starts with a finished run and a last success.
    "hourly-sync": {"type": "synthetic", "interval_minutes": 60,
                    "params": {"records": 50, "batch_size": 10, "reject_every": 20}},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _wait_for_api(base: str, proc: Proc, timeout: float = 30.0) -> None:
    """Poll /healthz until the daemon's loop ticks (it answers 503 before)."""
    def healthy() -> bool:
        exited_early(proc.popen.poll(), "its API became healthy", lambda: proc.log_path.read_text()[-3000:])
        try:
            return bool(_get_json(f"{base}/healthz").get("alive"))
        except OSError:
            return False

    wait_for_sync(healthy, timeout, 0.1, what="the daemon's API healthy",
                  details=lambda: proc.log_path.read_text()[-3000:])


async def _daemon(database_url: str, redis_url: str, tmp_path: Path, **env_extra: str) -> AsyncIterator[str]:
    port = _free_port()
    config = write_config(tmp_path / "batcher.toml", JOBS)
    env = batcher_env(database_url, redis_url, config, tmp_path / "data", BATCHER_API_PORT=str(port),
                      BATCHER_TICK_SECONDS="0.5", **env_extra)
    proc = Proc(["run"], env, tmp_path / "daemon.log")
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_api(base, proc)
        yield base
    finally:
        proc.close()


@pytest.fixture
async def daemon_url(db: asyncpg.Pool, database_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A real `python -m batcher run` with the jobs above, its API on a free port with a token (killed with
    its process group afterwards if still alive)."""
    async for base in _daemon(database_url, redis_url, tmp_path, BATCHER_API_TOKEN=TOKEN):
        yield base


@pytest.fixture
async def read_only_url(db: asyncpg.Pool, database_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """The same daemon without BATCHER_API_TOKEN (the default of `make run`): its API is read-only."""
    async for base in _daemon(database_url, redis_url, tmp_path):
        yield base


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian Chromium through Playwright."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make deps-browser`", pytrace=False)
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        try:
            yield chromium
        finally:
            await chromium.close()


async def _open(browser: Browser, url: str) -> tuple[Any, Any, list[str]]:
    """A new 1440x900 page on ``url`` that records console errors/warnings, page errors and HTTP errors."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = await browser.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(15_000)
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    await page.goto(url + "/")
    return context, page, problems


async def test_dashboard_trigger_progress_logs_and_pause(daemon_url: str, browser: Browser, db: asyncpg.Pool) -> None:
    """Load the page (no console errors), trigger ``slow-import`` (the token is asked for once), watch
    its progress bar and its records-over-time chart, see "running" as its last result though a skipped
    occurrence was recorded after it, open the succeeded run's logs, see the per-job charts of the last
    runs, cancel a second run, pause ``hourly-sync``, keep the keyboard focus across refreshes;
    screenshots are saved."""
    context, page, problems = await _open(browser, daemon_url)
    await expect(page).to_have_title("batcher")
    jobs = page.locator("#jobs tbody")
    hourly = jobs.locator("tr[data-job='hourly-sync']")
    slow = jobs.locator("tr[data-job='slow-import']")
    # The scheduled job ran by itself: its latest run succeeded and its last success has an age.
    await expect(hourly.get_by_role("button", name="Latest run of hourly-sync: succeeded")).to_be_visible()
    await expect(slow).to_contain_text("disabled")
    await expect(page.locator("#daemon")).to_contain_text("scheduler running")

    # Trigger: the token dialog comes first (the tab has none yet).
    await slow.get_by_role("button", name="Trigger slow-import now").click()
    dialog = page.get_by_role("dialog", name="API token")
    await expect(dialog).to_be_visible()
    await dialog.get_by_label("Token").fill(TOKEN)
    await dialog.get_by_role("button", name="Use token").click()
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#notice")).to_contain_text("queued")

    # The run shows up under "Running now" with a progress bar that moves.
    bar = page.locator("#running").get_by_role("progressbar", name="Progress of run")
    await expect(bar).to_be_visible()
    await expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^(?:[1-9]\d?|100)$"))
    # A scheduled occurrence skipped for overlap is recorded after the manual run: the job's last result
    # still shows the run in progress, not "skipped · overlap".
    await db.execute("INSERT INTO batch_runs (job_name, job_type, trigger, scheduled_for, status, reason, params,"
                     " finished_at, root_trigger) VALUES ('slow-import', 'synthetic', 'schedule', now(), 'skipped',"
                     " 'overlap', '{}', now(), 'schedule')")
    await expect(page.locator("#runs tbody tr.r-skipped", has=page.get_by_text("slow-import", exact=True))
                 ).to_have_count(1)
    await expect(slow.get_by_role("button", name="Latest run of slow-import: running")).to_be_visible()
    await page.screenshot(path=str(ARTIFACTS / "dashboard-running.png"), full_page=True)

    # Its details draw records over time from the samples the page takes while it refreshes.
    await page.locator("#running .run-card").get_by_role("button", name="Details of run").click()
    details = page.get_by_role("dialog", name="Run #")
    chart = details.locator("svg.records-chart")
    await expect(chart).to_have_attribute("data-samples", re.compile(r"^(?:[3-9]|\d\d+)$"))
    await expect(chart).to_have_attribute("aria-label", re.compile(r"^Records over time: [\d,]+ after"))
    assert await chart.locator("polyline.rec-line").count() == 1
    await page.screenshot(path=str(ARTIFACTS / "run-records-chart.png"), full_page=True)
    await page.keyboard.press("Escape")
    await expect(details).to_be_hidden()

    # Then it succeeds: the recent runs table shows it, and its details have its logs.
    run_row = page.locator("#runs tbody tr:not(.r-skipped)", has=page.get_by_text("slow-import", exact=True)).first
    await expect(run_row).to_contain_text("succeeded", timeout=30_000)
    await expect(page.locator("#running .run-card")).to_have_count(0)
    await run_row.get_by_role("button", name="Details of run").click()
    await expect(details).to_be_visible()
    await expect(details).to_contain_text("succeeded")
    await expect(details.locator(".counters")).to_contain_text("400")
    logs = details.locator("details.logs")
    await logs.locator("summary").click()
    await expect(logs.locator("table")).to_be_visible()
    await expect(logs.locator("tbody")).to_contain_text("run_started")
    await expect(logs.locator("tbody")).to_contain_text("run_finished")
    await page.screenshot(path=str(ARTIFACTS / "run-details.png"), full_page=True)
    await page.keyboard.press("Escape")
    await expect(details).to_be_hidden()

    # Per-job charts of the last runs: a bar per run that ran (the skipped occurrence is left out), its
    # colour the outcome, with a tooltip; both jobs have run by now.
    await _check_history_charts(page)

    # Cancel: trigger it again and cancel it from its progress card; the run ends cancelled.
    await slow.get_by_role("button", name="Trigger slow-import now").click()
    card = page.locator("#running .run-card")
    await expect(card).to_have_count(1)
    await card.get_by_role("button", name="Cancel run").click()
    cancelled = page.locator("#runs tbody tr.r-cancelled", has=page.get_by_text("slow-import", exact=True))
    await expect(cancelled).to_have_count(1, timeout=20_000)
    await expect(card).to_have_count(0)

    # Pause: no second token prompt; the row says paused and offers Resume.
    await hourly.get_by_role("button", name="Pause hourly-sync").click()
    await expect(hourly.locator(".badge.s-paused")).to_have_text("paused")
    await expect(hourly.get_by_role("button", name="Resume hourly-sync")).to_be_visible()
    await expect(page.get_by_role("dialog", name="API token")).to_be_hidden()
    config = _get_json(f"{daemon_url}/api/batch/config")["config"]
    assert config["hourly-sync"]["paused"] is True

    # Keyboard: Tab moves between real buttons and the focused one has a visible focus ring.
    await page.locator("#refresh").focus()
    await page.keyboard.press("Tab")
    focused = page.locator("#auto")
    await expect(focused).to_be_focused()
    ring = await focused.evaluate("el => el.matches(':focus-visible') && getComputedStyle(el).outlineStyle")
    assert ring not in (False, "none"), ring
    # A focused button in a table keeps the focus across the automatic refresh that redraws its row.
    resume = hourly.get_by_role("button", name="Resume hourly-sync")
    await resume.focus()
    updated = await page.locator("#updated").inner_text()
    await expect(page.locator("#updated")).not_to_have_text(updated)
    await expect(resume).to_be_focused()

    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    await context.close()
    assert problems == [], "\n".join(problems)


async def _check_history_charts(page: Any) -> None:
    """Each job's row has an SVG chart of its last runs: one bar per run with its status and a tooltip."""
    for job in ("hourly-sync", "slow-import"):
        chart = page.locator(f"#jobs tbody tr[data-job='{job}'] svg.run-history")
        await expect(chart).to_be_visible()
        await expect(chart).to_have_attribute("aria-label", re.compile(rf"^Last \d+ runs? of {job}: .*succeeded"))
        bar = chart.locator("rect.hbar[data-status='succeeded']").first
        await expect(bar).to_have_count(1)
        assert re.match(r"^Run #\d+ · succeeded · .* records", await bar.locator("title").text_content() or "")
    assert await page.locator("#jobs svg.run-history rect[data-status='skipped']").count() == 0


async def test_read_only_dashboard_says_so_and_disables_changes(read_only_url: str, browser: Browser,
                                                                 db: asyncpg.Pool) -> None:
    """A daemon without BATCHER_API_TOKEN: the page shows a read-only banner saying how to allow changes;
    Trigger, Pause and a running run's Cancel are disabled with a tooltip naming BATCHER_API_TOKEN; no
    token button and no token dialog; the per-job chart is there; no console or HTTP errors."""
    context, page, problems = await _open(browser, read_only_url)
    banner = page.get_by_role("note", name="Read-only")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("Read-only dashboard")
    await expect(banner).to_contain_text("Start the daemon with BATCHER_API_TOKEN")
    hourly = page.locator("#jobs tbody tr[data-job='hourly-sync']")
    await expect(hourly.get_by_role("button", name="Latest run of hourly-sync: succeeded")).to_be_visible()
    for name in ("Trigger hourly-sync now", "Pause hourly-sync", "Trigger slow-import now"):
        control = page.get_by_role("button", name=name)
        await expect(control).to_be_disabled()
        await expect(control).to_have_attribute("title", re.compile(r"^Read-only dashboard: .*BATCHER_API_TOKEN"))
    await expect(page.locator("#token-button")).to_be_hidden()
    await expect(page.locator("#jobs tbody tr[data-job='hourly-sync'] svg.run-history rect.hbar")).to_have_count(1)

    # A run queued by other means (the CLI) runs; its Cancel is disabled too.
    await db.execute(Q["insert_queued_run"], "slow-import", "synthetic", "manual", 0, {}, 0.0, None, None, 1, 0,
                     "manual")
    await db.execute(Q["notify_wakeup"], "")
    cancel = page.locator("#running .run-card").get_by_role("button", name="Cancel run")
    await expect(cancel).to_be_disabled()
    await expect(cancel).to_have_attribute("title", re.compile("BATCHER_API_TOKEN"))
    await page.screenshot(path=str(ARTIFACTS / "dashboard-read-only.png"), full_page=True)
    await expect(page.get_by_role("dialog", name="API token")).to_be_hidden()
    await context.close()
    assert problems == [], "\n".join(problems)
