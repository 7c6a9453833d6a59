"""``batcher apps add|remove|list`` (in-process CLI) and ``GET/POST /api/apps``, ``DELETE /api/apps/{name}``
(the real app on aiohttp's test client): what the tracked-apps handler contributes (issue 18)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from batcher.api import create_app
from batcher.cli import main
from batcher.testing import test_services, test_settings

TOKEN = "apps-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def apps_db(db: Any) -> Any:
    await db.execute("TRUNCATE tracked_apps")
    return db


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[Any], str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


def test_apps_cli_add_list_remove_round_trip(apps_db: Any, database_url: str, redis_url: str, tmp_path: Any,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """add stores an app and prints it; list shows it; remove deletes it; bad input is exit 2 with the
    reason, a duplicate or an unknown name exit 1."""
    for key, value in {"BATCHER_DATABASE_URL": database_url, "BATCHER_REDIS_URL": redis_url,
                       "BATCHER_CONFIG": "", "BATCHER_DATA_DIR": str(tmp_path), "BATCHER_LOG_FORMAT": "json"}.items():
        monkeypatch.setenv(key, value)
    code, out, err = cli(capsys, "apps", "add", "nginx", "docker:library/nginx:1.*", "--current", "1.26.0")
    assert code == 0, err
    assert out == [{"name": "nginx", "source": "docker:library/nginx:1.*", "currentVersion": "1.26.0",
                    "latestVersion": None, "updateAvailable": False, "allowPrerelease": False, "checkedAt": None}]
    assert cli(capsys, "apps", "add", "app", "github:acme/app", "--prerelease")[0] == 0
    code, out, _ = cli(capsys, "apps", "list")
    assert code == 0 and [a["name"] for a in out] == ["app", "nginx"] and out[0]["allowPrerelease"] is True
    code, _, err = cli(capsys, "apps", "add", "x", "gitlab:acme/app")
    assert code == 2 and "is not github:owner/repo or docker:namespace/repo[:tag-pattern]" in err
    code, _, err = cli(capsys, "apps", "add", "x", "github:acme/app", "--current", "not a version")
    assert code == 2 and "is not a version" in err
    code, _, err = cli(capsys, "apps", "add", "bad name", "github:acme/app")
    assert code == 2 and "name" in err
    code, _, err = cli(capsys, "apps", "add", "app", "github:acme/other")
    assert code == 1 and "already tracked" in err
    assert cli(capsys, "apps", "remove", "app")[:2] == (0, [{"removed": "app"}])
    code, _, err = cli(capsys, "apps", "remove", "app")
    assert code == 1 and "is not tracked" in err
    assert cli(capsys, "apps")[0] == 2  # no action
    assert [a["name"] for a in cli(capsys, "apps", "list")[1]] == ["nginx"]


async def test_api_apps_round_trip_with_bad_input_refused(apps_db: Any, database_url: str, redis_url: str) -> None:
    """POST (token) adds → 200 with the app; GET lists it; DELETE removes it (404 after); writes without the
    token are 401; bad input is 400 with the reason and field; a duplicate is 409; the three operations
    are in the OpenAPI document."""
    async with test_services(test_settings(database_url, redis_url)) as services:
        client = TestClient(TestServer(create_app(services, token=TOKEN), host="127.0.0.1"))
        await client.start_server()
        try:
            new = {"name": "app", "source": "github:acme/app", "currentVersion": "v1.2.0"}
            assert (await client.post("/api/apps", json=new)).status == 401
            response = await client.post("/api/apps", json=new, headers=AUTH)
            body = await response.json()
            assert response.status == 200 and body["app"]["currentVersion"] == "v1.2.0", body
            assert (await client.post("/api/apps", json=new, headers=AUTH)).status == 409
            for bad, field in (({**new, "name": "x", "source": "svn:acme/app"}, "source"),
                               ({**new, "name": "x", "currentVersion": "nope"}, "currentVersion"),
                               ({**new, "name": "x", "allowPrerelease": "yes"}, "allowPrerelease"),
                               ({**new, "name": "x", "extra": 1}, "extra"),
                               ({"source": "github:acme/app"}, "name")):
                response = await client.post("/api/apps", json=bad, headers=AUTH)
                error = (await response.json())["error"]
                assert response.status == 400 and error["code"] == "validation_error" and error["field"] == field, error
            listed = await (await client.get("/api/apps")).json()
            assert listed["success"] is True and [a["name"] for a in listed["apps"]] == ["app"]
            assert (await client.delete("/api/apps/app")).status == 401
            response = await client.delete("/api/apps/app", headers=AUTH)
            assert (response.status, await response.json()) == (200, {"success": True, "removed": "app"})
            assert (await client.delete("/api/apps/app", headers=AUTH)).status == 404
            assert (await client.delete("/api/apps/bad%20name", headers=AUTH)).status == 400
            document = await (await client.get("/api/openapi.json")).json()
        finally:
            await client.close()
    assert {op["operationId"] for path in ("/api/apps", "/api/apps/{name}")
            for op in document["paths"][path].values()} == {"listApps", "addApp", "removeApp"}
