"""A third-party handler as a plugin would write it: only the public ``batcher`` API, a ``batcher hello``
command and a ``GET /api/hello/{name}`` route (plus a token-protected POST)."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

from batcher import (
    ApiRequest,
    ApiResponse,
    ApiRoute,
    ApiRouteError,
    Batch,
    CliCommand,
    CommandContext,
    Handler,
    HandlerParams,
    RunContext,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("--shout", action="store_true")


async def hello(args: argparse.Namespace, ctx: CommandContext) -> int:
    async with ctx.services() as services:
        jobs = await services.pool.fetchval("SELECT count(*) FROM batch_config")
    ctx.print_json({"hello": args.name.upper() if args.shout else args.name, "jobs": jobs})
    return 0


async def greet(request: ApiRequest) -> ApiResponse:
    name = request.path_params["name"]
    if not name.isalpha():
        raise ApiRouteError(400, "invalid_parameter", "name: letters only", "name")
    return ApiResponse({"success": True, "hello": name, "loud": request.query.get("loud") == "1"})


async def remember(request: ApiRequest) -> ApiResponse:
    return ApiResponse({"success": True, "stored": dict(request.body or {})}, status=201)


class HelloHandler(Handler):
    type = "hello-plugin"
    display_name = "Hello (test plugin)"
    Params = HandlerParams
    streams = ()
    cli_commands = (CliCommand("hello", "say hello", add_arguments, hello),)
    api_routes = (
        ApiRoute("GET", "/api/hello/{name}", "helloGreet", greet,
                 {"summary": "Greet", "parameters": [{"name": "name", "in": "path", "required": True,
                                                      "schema": {"type": "string"}}]}),
        ApiRoute("POST", "/api/hello", "helloRemember", remember, {"summary": "Remember"}, mutating=True, body=True),
    )

    async def run(self, ctx: RunContext, params: Any) -> AsyncIterator[Batch]:
        return
        yield
