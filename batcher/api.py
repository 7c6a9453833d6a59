"""The admin API: aiohttp.web inside the daemon's loop — endpoints, auth, error envelopes, start-up.

Owns the HTTP side of steering the daemon: one route per :data:`batcher.openapi.OPERATIONS` entry, each
request validated by its pydantic model (:mod:`batcher.apimodels`) before any SQL, each answer serialized
through its response model. The work itself is :mod:`batcher.commands` (shared with the CLI).

- Errors are ``{"success": false, "error": {"code", "message", "field"?}}``: 400 (malformed JSON,
  validation, bad path or query values), 401 (missing or wrong bearer token), 403 (read-only: no
  ``BATCHER_API_TOKEN``), 404, 405, 409, 413 (body over ``api.max_body_bytes``). Never a stack trace.
- Mutating operations need ``Authorization: Bearer <BATCHER_API_TOKEN>`` (compared in constant time);
  reads are open. Binding a non-loopback address without a token refuses to start (:func:`check_bind`).
- ``/`` is the dashboard (``static/index.html``) and ``/static/{name}`` its files: only names directly in
  :data:`STATIC_DIR`, with a strict Content-Security-Policy (no inline script, nothing from elsewhere).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from batcher import apimodels as m
from batcher import commands, metrics
from batcher.apiviews import READ_ONLY_ADVICE, VIEWS, ApiContext, ApiError, Reply, SchedulerView, View
from batcher.errors import ConfigError
from batcher.extension import ApiRequest, ApiRoute, ApiRouteError
from batcher.models import Services
from batcher.openapi import OPERATIONS, Operation, build_document, handler_routes
from batcher.settings import ApiSettings
from batcher.store import DB_DATA_ERRORS, DB_ERRORS

log = structlog.get_logger("batcher.api")
STATIC_DIR = Path(__file__).resolve().parent / "static"
CONTEXT = web.AppKey("batcher_api", ApiContext)
BODY_LIMIT = web.AppKey("batcher_api_body_limit", int)


Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body = m.ErrorResponse(error=m.ErrorBody(code=code, message=message, field=field))
    return web.json_response(body.model_dump(mode="json", by_alias=True, exclude_none=True), status=status,
                             headers=headers)


def _camel_key(key: str | None) -> str | None:
    if key is None:
        return None
    head, _, rest = key.partition(".")
    return to_camel(head) + (f".{rest}" if rest else "") if head != "params" else key


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 400: "bad_request"}


@web.middleware
async def envelope_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                          ) -> web.StreamResponse:
    """Every failure as the error envelope; database outages as 503; anything else as a logged 500."""
    try:
        return await handler(request)
    except (ApiError, ApiRouteError) as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.message, exc.field, headers)
    except commands.NotFound as exc:
        return error_response(404, "not_found", str(exc))
    except commands.Conflict as exc:
        return error_response(409, "conflict", str(exc))
    except ConfigError as exc:
        return error_response(400, "validation_error", exc.reason, _camel_key(exc.key))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = f"request body too large (over {request.config_dict[BODY_LIMIT]} bytes)" \
            if exc.status == 413 else exc.reason
        return error_response(exc.status, code, message, headers={k: v for k, v in exc.headers.items()
                                                                   if k == "Allow"})
    except DB_DATA_ERRORS as exc:
        return error_response(400, "validation_error", f"a value was refused by the database: {exc}")
    except DB_ERRORS as exc:
        log.warning("api_database_error", path=request.path, error=type(exc).__name__)
        return error_response(503, "database_unavailable", "PostgreSQL is unavailable; try again")
    except Exception:
        log.exception("api_internal_error", path=request.path, method=request.method)
        return error_response(500, "internal_error", "internal error (see the daemon's log)")


# ----------------------------------------------------------------------------------- request decoding


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_json_values(value: Any) -> None:
    """Strings PostgreSQL can store (no NUL, no lone surrogate) and finite numbers, at any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            m.checked_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite")


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()  # over client_max_size: HTTPRequestEntityTooLarge → 413
    if not raw.strip():
        raise ApiError(400, "invalid_json", "a JSON object body is required")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
        _check_json_values(data)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not acceptable JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return data


def _validate(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        code = "validation_error" if where == "body" else "invalid_parameter"
        raise ApiError(400, code, f"{loc + ': ' if loc else ''}{message}", loc or None) from None


def _authorize(ctx: ApiContext, request: web.Request) -> None:
    if ctx.token is None:
        raise ApiError(403, "read_only", f"the API is read-only: {READ_ONLY_ADVICE}")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)")
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), ctx.token.encode()):
        raise ApiError(401, "unauthorized", "wrong bearer token")


def _route(op: Operation, view: View) -> Endpoint:
    """The aiohttp handler of one operation: auth, query and body validation, the view, the answer."""

    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CONTEXT]
        if op.mutating:
            _authorize(ctx, request)
        query = _validate(op.query, dict(request.query), "query") if op.query else None
        body = _validate(op.body, await _read_json(request), "body") if op.body else None
        result = await view(ctx, request.match_info, query, body)
        if not isinstance(result, Reply):
            return web.json_response(m.dump(result))
        if result.model is not None:
            return web.json_response(m.dump(result.model), status=result.status)
        return web.Response(body=result.body, status=result.status, headers={"Content-Type": result.content_type})

    return handle


def _handler_route(route: ApiRoute) -> Endpoint:
    """The aiohttp handler of a route a handler contributes: auth, the JSON body, its answer."""

    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CONTEXT]
        if route.mutating:
            _authorize(ctx, request)
        body = await _read_json(request) if route.body else None
        answer = await route.handle(ApiRequest(request.method, dict(request.match_info), dict(request.query),
                                               body, ctx.services.pool))
        return web.json_response(answer.body, status=answer.status, dumps=lambda v: json.dumps(v, default=str))

    return handle


_STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_STATIC_HEADERS = {
    "Cache-Control": "no-cache",  # revalidated on every load, so an upgraded daemon serves its own page
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def _static_file(name: str) -> web.StreamResponse:
    kind = _STATIC_TYPES.get(Path(name).suffix)
    path = STATIC_DIR / name
    if kind is None or "/" in name or name.startswith(".") or not path.is_file():
        raise ApiError(404, "not_found", f"no static file {name[:100]!r}")
    return web.FileResponse(path, headers={**_STATIC_HEADERS, "Content-Type": f"{kind}; charset=utf-8"})


async def dashboard(_request: web.Request) -> web.StreamResponse:
    """The dashboard page (plain HTML and JavaScript over this API)."""
    return _static_file("index.html")


async def static_file(request: web.Request) -> web.StreamResponse:
    return _static_file(request.match_info["name"])


# ------------------------------------------------------------------------------------ app and start-up


def create_app(services: Services, scheduler: SchedulerView | None = None, *, token: str | None = None,
               commit_lag: float = 10.0, stall_after: float | None = None) -> web.Application:
    """The admin API application (also what the tests drive with aiohttp's test client)."""
    tick = scheduler.tick_seconds if scheduler is not None else services.settings.daemon.tick_seconds
    ctx = ApiContext(services, scheduler, token or None, metrics.DatabaseMetrics(commit_lag),
                     stall_after if stall_after is not None else max(30.0, 10 * tick),
                     json.dumps(build_document(handler_routes(services.registry))).encode())
    limit = services.settings.api.max_body_bytes
    # aiohttp refuses a body of client_max_size bytes or more: + 1 lets exactly max_body_bytes through.
    app = web.Application(middlewares=[envelope_errors], client_max_size=limit + 1)
    app[CONTEXT], app[BODY_LIMIT] = ctx, limit
    app.router.add_get("/", dashboard)
    app.router.add_get("/static/{name}", static_file)
    # Routes are added in OPERATIONS order: the fixed /runs/latest before /runs/{id}. GET routes answer
    # HEAD too (add_get: the same handler, aiohttp drops the body).
    for op in OPERATIONS:
        handler = _route(op, VIEWS[op.operation_id])
        if op.method == "GET":
            app.router.add_get(op.path, handler, name=op.operation_id)
        else:
            app.router.add_route(op.method, op.path, handler, name=op.operation_id)
    for route in handler_routes(services.registry):  # what handlers contribute (batcher.extension.ApiRoute)
        if route.method == "GET":
            app.router.add_get(route.path, _handler_route(route), name=route.operation_id)
        else:
            app.router.add_route(route.method, route.path, _handler_route(route), name=route.operation_id)

    async def start_feed(_app: web.Application) -> None:
        with contextlib.suppress(*DB_ERRORS):
            await ctx.feed.start(services.pool)

    app.on_startup.append(start_feed)  # type: ignore[arg-type]  # aiohttp 3.11's Signal typing
    return app


def _is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(api: ApiSettings) -> None:
    """Refuse to expose the API beyond loopback without a token (ConfigError: exit 2)."""
    if api.port and not api.token and not _is_loopback(api.host):
        raise ConfigError(f"the admin API would listen on {api.host}, which is not a loopback address, "
                          "without a token: set BATCHER_API_TOKEN (or BATCHER_API_HOST=127.0.0.1, or "
                          "BATCHER_API_PORT=0 to turn the API off)", key="api.host")


async def start_api(stack: contextlib.AsyncExitStack, services: Services,
                    scheduler: SchedulerView | None) -> web.AppRunner | None:
    """Serve the API on BATCHER_API_HOST:BATCHER_API_PORT until the stack closes (port 0: off)."""
    api = services.settings.api
    if api.port == 0:
        log.info("api_disabled")
        return None
    check_bind(api)
    # shutdown_timeout: a request still running at stop gets 5 s (the drain already happened by then).
    runner = web.AppRunner(create_app(services, scheduler, token=api.token), access_log=None,
                           handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    try:
        await web.TCPSite(runner, api.host, api.port, reuse_address=True).start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {api.host}:{api.port}: {exc.strerror or exc}",
                          key="BATCHER_API_PORT") from None
    log.info("api_listening", host=api.host, port=api.port, read_only=api.token is None)
    return runner
