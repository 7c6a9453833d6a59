"""Managing the ``tracked_apps`` table: ``batcher apps add|remove|list`` and ``GET/POST /api/apps``,
``DELETE /api/apps/{name}`` — contributed by :class:`handlers.tracked_apps.TrackedAppsHandler` through
``cli_commands`` and ``api_routes`` (issue 18).

An app is a ``name`` (letters, digits, ``.``, ``_``, ``-``; up to 100), a ``source`` —
``github:owner/repo`` or ``docker:namespace/repo`` with an optional ``:tag-pattern`` (a glob such as
``1.*``) — an optional ``current_version`` (a version ``packaging`` reads, a leading ``v`` allowed) and
``allow_prerelease`` (pre-releases count as newer only then). Bad input is refused with the reason: exit 2
on the command line, 400 from the API; a name already tracked is exit 1 / 409; an unknown name on
remove is exit 1 / 404. Writes through the API need the bearer token.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from batcher import ApiRequest, ApiResponse, ApiRoute, ApiRouteError, CliCommand, CommandContext, ConfigError
from batcher.errors import BatcherError
from batcher.extension import EXIT_OK

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_GITHUB = re.compile(r"^github:([A-Za-z0-9_.-]{1,100})/([A-Za-z0-9_.-]{1,100})$")
_DOCKER = re.compile(r"^docker:([a-z0-9][a-z0-9._-]{0,99})/([a-z0-9][a-z0-9._-]{0,99})(?::([A-Za-z0-9_.*?-]{1,128}))?$")

SQL_LIST = """SELECT name, source, current_version, latest_version, update_available, allow_prerelease, checked_at
FROM tracked_apps ORDER BY name"""
SQL_ADD = """INSERT INTO tracked_apps (name, source, current_version, allow_prerelease) VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO NOTHING
RETURNING name, source, current_version, latest_version, update_available, allow_prerelease, checked_at"""
SQL_REMOVE = "DELETE FROM tracked_apps WHERE name = $1 RETURNING name"


def parse_version(text: str | None) -> Version | None:
    """``text`` as a version (``v1.2.3`` → 1.2.3), or None when it is not one."""
    if not text:
        return None
    try:
        return Version(text.strip().removeprefix("v").removeprefix("V"))
    except InvalidVersion:
        return None


def parse_source(source: str) -> tuple[str, str, str | None]:
    """``("github", "owner/repo", None)`` or ``("docker", "namespace/repo", pattern or None)``;
    ValueError naming the accepted forms."""
    if m := _GITHUB.match(source):
        return "github", f"{m[1]}/{m[2]}", None
    if m := _DOCKER.match(source):
        return "docker", f"{m[1]}/{m[2]}", m[3]
    raise ValueError(f"{source[:100]!r} is not github:owner/repo or docker:namespace/repo[:tag-pattern]")


class NewApp(BaseModel):
    """An app to track (API body in camelCase: name, source, currentVersion, allowPrerelease)."""

    model_config = ConfigDict(extra="forbid", strict=True, alias_generator=to_camel, populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=100)
    source: str = Field(max_length=240)
    current_version: str | None = Field(None, max_length=64)
    allow_prerelease: bool = False

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        parse_source(value)
        return value

    @field_validator("current_version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is not None and parse_version(value) is None:
            raise ValueError(f"{value[:64]!r} is not a version (e.g. 1.2.3 or v1.2.3)")
        return value


def describe(exc: ValidationError) -> tuple[str, str]:
    """(field, message) of the first problem, in the API's camelCase."""
    err = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in err["loc"])
    return field, f"{field + ': ' if field else ''}{err['msg'].removeprefix('Value error, ')}"


def app_json(row: Any) -> dict[str, Any]:
    at = row["checked_at"]
    return {"name": row["name"], "source": row["source"], "currentVersion": row["current_version"],
            "latestVersion": row["latest_version"], "updateAvailable": row["update_available"],
            "allowPrerelease": row["allow_prerelease"], "checkedAt": at.isoformat() if at else None}


async def add_app(pool: Any, app: NewApp) -> dict[str, Any] | None:
    """The stored app, or None when the name is already tracked."""
    row = await pool.fetchrow(SQL_ADD, app.name, app.source, app.current_version, app.allow_prerelease)
    return app_json(row) if row else None


# ------------------------------------------------------------------------------------------ the CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="apps_action", required=True, metavar="ACTION")
    p = sub.add_parser("add", help="track an app")
    p.add_argument("name")
    p.add_argument("source", help="github:owner/repo or docker:namespace/repo[:tag-pattern]")
    p.add_argument("--current", help="the version in use (e.g. 1.4.2)")
    p.add_argument("--prerelease", action="store_true", help="pre-releases count as newer")
    sub.add_parser("remove", help="stop tracking an app").add_argument("name")
    sub.add_parser("list", help="every tracked app, one JSON line each")


async def cmd_apps(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``batcher apps add|remove|list``."""
    new: NewApp | None = None
    if args.apps_action == "add":
        try:
            new = NewApp(name=args.name, source=args.source, current_version=args.current,
                         allow_prerelease=args.prerelease)
        except ValidationError as exc:
            raise ConfigError(f"apps add: {describe(exc)[1]}") from None
    async with ctx.services(start_embedded=True, schema="migrate") as services:
        if new is not None:
            stored = await add_app(services.pool, new)
            if stored is None:
                raise BatcherError(f"apps add: {new.name!r} is already tracked (remove it first)")
            ctx.print_json(stored)
        elif args.apps_action == "remove":
            if await services.pool.fetchval(SQL_REMOVE, args.name) is None:
                raise BatcherError(f"apps remove: {args.name!r} is not tracked")
            ctx.print_json({"removed": args.name})
        else:
            for row in await services.pool.fetch(SQL_LIST):
                ctx.print_json(app_json(row))
    return EXIT_OK


APPS_COMMANDS = (CliCommand("apps", "track apps for new releases: apps add|remove|list", add_arguments, cmd_apps),)


# ------------------------------------------------------------------------------------------ the API


async def list_apps(request: ApiRequest) -> ApiResponse:
    return ApiResponse({"success": True, "apps": [app_json(r) for r in await request.pool.fetch(SQL_LIST)]})


async def post_app(request: ApiRequest) -> ApiResponse:
    try:
        new = NewApp.model_validate(request.body)
    except ValidationError as exc:
        field, message = describe(exc)
        raise ApiRouteError(400, "validation_error", message, field or None) from None
    stored = await add_app(request.pool, new)
    if stored is None:
        raise ApiRouteError(409, "conflict", f"{new.name!r} is already tracked")
    return ApiResponse({"success": True, "app": stored})


async def delete_app(request: ApiRequest) -> ApiResponse:
    name = request.path_params["name"]
    if not re.match(NAME_PATTERN, name):
        raise ApiRouteError(400, "invalid_parameter", "name: not an app name", "name")
    if await request.pool.fetchval(SQL_REMOVE, name) is None:
        raise ApiRouteError(404, "not_found", f"{name!r} is not tracked")
    return ApiResponse({"success": True, "removed": name})


_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
_APP = {"type": "object", "required": ["name", "source", "currentVersion", "latestVersion", "updateAvailable",
                                       "allowPrerelease", "checkedAt"],
        "properties": {"name": {"type": "string"}, "source": {"type": "string"},
                       "currentVersion": {"type": ["string", "null"]}, "latestVersion": {"type": ["string", "null"]},
                       "updateAvailable": {"type": "boolean"}, "allowPrerelease": {"type": "boolean"},
                       "checkedAt": {"type": ["string", "null"], "format": "date-time"}}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ok(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": ["success", *properties],
            "properties": {"success": {"const": True}, **properties}}


def _new_app_schema() -> dict[str, Any]:
    schema = NewApp.model_json_schema(by_alias=True)
    schema.pop("title", None)
    for prop in schema["properties"].values():
        prop.pop("title", None)
    schema["properties"]["source"]["pattern"] = f"{_GITHUB.pattern}|{_DOCKER.pattern}"
    return schema


APPS_ROUTES = (
    ApiRoute("GET", "/api/apps", "listApps", list_apps,
             {"summary": "Tracked apps with their latest known version",
              "responses": {"200": _json(_ok(apps={"type": "array", "items": _APP}))}}),
    ApiRoute("POST", "/api/apps", "addApp", post_app,
             {"summary": "Track an app (github:owner/repo or docker:namespace/repo[:tag-pattern])",
              "requestBody": {"required": True, "content": {"application/json": {"schema": _new_app_schema()}}},
              "responses": {"200": _json(_ok(app=_APP), "Tracked"), "409": _json(_ERROR, "Already tracked")}},
             mutating=True, body=True),
    ApiRoute("DELETE", "/api/apps/{name}", "removeApp", delete_app,
             {"summary": "Stop tracking an app",
              "parameters": [{"name": "name", "in": "path", "required": True,
                              "schema": {"type": "string", "pattern": NAME_PATTERN}}],
              "responses": {"200": _json(_ok(removed={"type": "string"})), "404": _json(_ERROR, "Not tracked")}},
             mutating=True),
)
