"""Issue 18: a handler plugin (a ``batcher.handlers`` entry point to ``tests.plugins.hello``) contributes a
``batcher`` subcommand and admin-API routes with their OpenAPI entries, through the public handler API
only; a contributed command that takes a built-in's name is refused."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from batcher import registry
from batcher.api import create_app
from batcher.cli import main
from batcher.testing import test_services, test_settings

TOKEN = "plugin-token-0123456789"
PLUGIN = EntryPoint(name="hello", value="tests.plugins.hello:HelloHandler", group="batcher.handlers")


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry sees the test package's entry point (as if its distribution were installed)."""
    monkeypatch.setattr(registry, "entry_points", lambda group: [PLUGIN] if group == "batcher.handlers" else [])


def test_plugin_contributes_a_cli_command(plugin: None, db: Any, database_url: str, redis_url: str,
                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Any) -> None:
    """``batcher hello NAME --shout`` runs the plugin's command with services from the runtime; ``--help``
    lists it; a bad command line is exit 2."""
    for key, value in {"BATCHER_DATABASE_URL": database_url, "BATCHER_REDIS_URL": redis_url,
                       "BATCHER_CONFIG": "", "BATCHER_DATA_DIR": str(tmp_path), "BATCHER_LOG_FORMAT": "json"}.items():
        monkeypatch.setenv(key, value)
    assert main(["hello", "world", "--shout"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"hello": "WORLD", "jobs": 0}
    assert main(["--help"]) == 0
    assert "hello" in capsys.readouterr().out
    assert main(["hello"]) == 2
    assert "the following arguments are required: name" in capsys.readouterr().err


async def test_plugin_contributes_api_routes_and_openapi_entries(plugin: None, db: Any, database_url: str,
                                                                 redis_url: str) -> None:
    """GET /api/hello/{name} answers the plugin's JSON; its ApiRouteError is the error envelope; the POST
    needs the token; both appear in /api/openapi.json with the runtime's security and error responses."""
    async with test_services(test_settings(database_url, redis_url)) as services:
        assert "hello-plugin" in services.registry
        client = TestClient(TestServer(create_app(services, token=TOKEN), host="127.0.0.1"))
        await client.start_server()
        try:
            response = await client.get("/api/hello/ada", params={"loud": "1"})
            assert (response.status, await response.json()) == (200, {"success": True, "hello": "ada", "loud": True})
            response = await client.get("/api/hello/a1")
            assert response.status == 400
            assert (await response.json())["error"] == {"code": "invalid_parameter", "message": "name: letters only",
                                                        "field": "name"}
            assert (await client.post("/api/hello", json={"x": 1})).status == 401
            response = await client.post("/api/hello", json={"x": 1}, headers={"Authorization": f"Bearer {TOKEN}"})
            assert (response.status, await response.json()) == (201, {"success": True, "stored": {"x": 1}})
            document = await (await client.get("/api/openapi.json")).json()
        finally:
            await client.close()
    get = document["paths"]["/api/hello/{name}"]["get"]
    post = document["paths"]["/api/hello"]["post"]
    assert get["operationId"] == "helloGreet" and "security" not in get
    assert post["security"] == [{"bearer": []}] and {"401", "403", "413"} <= set(post["responses"])


def test_a_plugin_command_may_not_take_a_builtin_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A contributed command named like a built-in (``runs``) is a configuration error, named."""
    from batcher import CliCommand
    from batcher.errors import ConfigError
    from batcher.handlercommands import handler_commands
    from tests.plugins.hello import HelloHandler

    class Clash(HelloHandler):
        type = "clash"
        cli_commands = (CliCommand("runs", "clash", lambda p: None, HelloHandler.cli_commands[0].run),)

    with pytest.raises(ConfigError, match="'runs', which is a built-in command"):
        handler_commands({"clash": Clash})
