"""The admin API's operations and its OpenAPI 3.1 document, generated from the pydantic models.

Owns the list of operations (method, path, models, whether it mutates): :mod:`batcher.api` registers one
aiohttp route per entry, so the document and the server cannot drift apart. Schemas come from
:mod:`batcher.apimodels` in pydantic's JSON Schema (2020-12, which OpenAPI 3.1 uses as is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from batcher import __version__
from batcher import apimodels as m
from batcher.errors import ConfigError
from batcher.extension import ApiRoute

_REF = "#/components/schemas/{model}"
_ERRORS = {400: "Invalid input (malformed JSON, validation, bad path or query value)",
           401: "Missing or wrong bearer token", 403: "The API is read-only (no BATCHER_API_TOKEN set)",
           404: "No such job or run", 409: "Ambiguous job type or a state conflict",
           413: "Request body too large"}
_PATH_PARAMS = {"id": {"type": "integer", "minimum": 1, "maximum": m.BIGINT_MAX},
                "name": {"type": "string", "minLength": 1, "maxLength": 200}}


@dataclass(frozen=True)
class Operation:
    """One endpoint of the admin API."""

    operation_id: str
    method: str
    path: str
    summary: str
    response: type[BaseModel] | None  # None: not JSON (see ``media_type``)
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    mutating: bool = False
    errors: tuple[int, ...] = ()
    media_type: str = "application/json"
    extra_responses: dict[int, type[BaseModel]] = field(default_factory=dict)


OPERATIONS: tuple[Operation, ...] = (
    Operation("getConfig", "GET", "/api/batch/config", "Every job's configuration", m.ConfigResponse),
    Operation("updateConfig", "POST", "/api/batch/config",
              "Change a job's schedule, priority, queue or params (validated, stored, next run recomputed)",
              m.ConfigUpdateResponse, body=m.ConfigUpdate, mutating=True, errors=(400, 404, 409, 413)),
    Operation("getStatus", "GET", "/api/batch/status", "Scheduler, this worker and the other workers",
              m.StatusResponse),
    Operation("triggerRun", "POST", "/api/batch/trigger", "Queue a manual run", m.TriggerResponse,
              body=m.TriggerRequest, mutating=True, errors=(400, 404, 409, 413)),
    Operation("listRuns", "GET", "/api/batch/runs", "Runs, newest first, one page", m.RunsResponse,
              query=m.RunsQuery, errors=(400,)),
    Operation("latestRun", "GET", "/api/batch/runs/latest", "The latest run, or the latest of every job",
              m.LatestRunResponse, query=m.LatestQuery, errors=(400,),
              extra_responses={200: m.LatestRunsByJobResponse}),
    Operation("getRun", "GET", "/api/batch/runs/{id}", "One run with its logs, errors, progress, counters",
              m.RunResponse, errors=(400, 404)),
    Operation("cancelRun", "POST", "/api/batch/runs/{id}/cancel", "Cancel a queued run or stop a running one",
              m.CancelResponse, mutating=True, errors=(400, 404, 409)),
    Operation("pauseJob", "POST", "/api/batch/jobs/{name}/pause", "Pause a job (nothing of it is claimed)",
              m.PauseResponse, mutating=True, errors=(400, 404)),
    Operation("resumeJob", "POST", "/api/batch/jobs/{name}/resume", "Resume a paused job", m.PauseResponse,
              mutating=True, errors=(400, 404)),
    Operation("jobHistory", "GET", "/api/batch/jobs/history",
              "Every job's last runs that ran (succeeded, failed, cancelled), newest first, for charts",
              m.HistoryResponse, query=m.HistoryQuery, errors=(400,)),
    Operation("nextRuns", "GET", "/api/batch/jobs/{name}/next", "The job's next occurrences", m.NextResponse,
              query=m.NextQuery, errors=(400, 404)),
    Operation("listDeadLetters", "GET", "/api/batch/dead-letters", "Dead letters, newest first",
              m.DeadLettersResponse, query=m.DeadLettersQuery, errors=(400,)),
    Operation("getInfo", "GET", "/api/info", "The daemon's version and whether the API is read-only",
              m.InfoResponse),
    Operation("listHandlers", "GET", "/api/handlers", "Every job type and its params (as `batcher types`)",
              m.HandlersResponse),
    Operation("openapi", "GET", "/api/openapi.json", "This document", None),
    Operation("metrics", "GET", "/metrics", "Prometheus metrics", None,
              media_type="text/plain; version=0.0.4"),
    Operation("healthz", "GET", "/healthz", "Alive: the scheduling loop ticks (503 when it stalled)",
              m.HealthResponse, extra_responses={503: m.HealthResponse}),
    Operation("readyz", "GET", "/readyz", "Ready: PostgreSQL and Redis reachable (503 otherwise)",
              m.ReadyResponse, extra_responses={503: m.ReadyResponse}),
)


def _models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [m.ErrorResponse]
    for op in OPERATIONS:
        for model in (op.response, op.body, *op.extra_responses.values()):
            if model is not None and model not in found:
                found.append(model)
    return found


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model.__name__)}


def _parameters(op: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in _PATH_PARAMS.items() if "{" + name + "}" in op.path]
    if op.query is not None:
        schema = op.query.model_json_schema(by_alias=True)
        for name, prop in schema.get("properties", {}).items():
            prop = _not_null({k: v for k, v in prop.items() if k != "title"})
            params.append({"name": name, "in": "query", "required": False, "schema": prop})
    return params


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent or a value, never JSON null: drop pydantic's null alternative."""
    options = [o for o in schema.get("anyOf", []) if o != {"type": "null"}]
    if len(options) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    return {**options[0], **rest}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _responses(op: Operation) -> dict[str, Any]:
    if op.response is None:
        schema: dict[str, Any] = {"type": "object"} if op.media_type == "application/json" else {"type": "string"}
        ok: dict[str, Any] = {"description": "OK", "content": {op.media_type: {"schema": schema}}}
    else:
        alternatives = [op.response, *[v for k, v in op.extra_responses.items() if k == 200]]
        schema = _ref(op.response) if len(alternatives) == 1 else {"anyOf": [_ref(a) for a in alternatives]}
        ok = {"description": "OK", "content": _json(schema)}
    out: dict[str, Any] = {"200": ok}
    for status, model in op.extra_responses.items():
        if status != 200:
            out[str(status)] = {"description": "Not ready" if status == 503 else "Error", "content": _json(_ref(model))}
    codes = set(op.errors) | ({401, 403} if op.mutating else set()) | ({413} if op.body else set())
    for status in sorted(codes):
        out[str(status)] = {"description": _ERRORS[status], "content": _json(_ref(m.ErrorResponse))}
    return out


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "responses": _responses(op)}
    params = _parameters(op)
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": _json(_ref(op.body))}
    if op.mutating:
        out["security"] = [{"bearer": []}]
    return out


def handler_routes(registry: Mapping[str, Any]) -> list[ApiRoute]:
    """The routes handlers contribute, in registry order; one that takes an operation id or a method and
    path already served is a ConfigError."""
    taken = {op.operation_id for op in OPERATIONS} | {(op.method, op.path) for op in OPERATIONS}
    out: list[ApiRoute] = []
    for job_type, cls in registry.items():
        for route in cls.api_routes:
            clash = {route.operation_id, (route.method, route.path)} & taken
            if clash:
                raise ConfigError(f"handler {job_type!r} contributes the API route {route.method} {route.path} "
                                  f"({route.operation_id}), which is already served")
            taken |= {route.operation_id, (route.method, route.path)}
            out.append(route)
    return out


def _route_operation(route: ApiRoute) -> dict[str, Any]:
    """A contributed route's operation object: its own, with the id, security and error responses."""
    out: dict[str, Any] = {**route.openapi, "operationId": route.operation_id}
    responses = dict(out.get("responses") or {"200": {"description": "OK", "content": _json({})}})
    codes = {400} | ({401, 403} if route.mutating else set()) | ({413} if route.body else set())
    for status in sorted(codes):
        responses.setdefault(str(status), {"description": _ERRORS[status], "content": _json(_ref(m.ErrorResponse))})
    out["responses"] = responses
    if route.mutating:
        out["security"] = [{"bearer": []}]
    return out


def build_document(routes: Sequence[ApiRoute] = ()) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin API, with the routes handlers contribute."""
    models = _models()
    _, top = models_json_schema([(model, "serialization") for model in models if model not in _request_models()]
                                + [(model, "validation") for model in _request_models()],
                                by_alias=True, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _route_operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "batcher admin API", "version": __version__,
                 "description": "Steer and observe the batcher daemon. Mutating operations need "
                                "`Authorization: Bearer <BATCHER_API_TOKEN>`; without a token the API is "
                                "read-only. Errors: {\"success\": false, \"error\": {code, message, field?}}."},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _request_models() -> list[type[BaseModel]]:
    return [op.body for op in OPERATIONS if op.body is not None]
