"""``GET /api/agent/status?tenant=&user=&feature_type=`` as a plain function (the route mechanism wires it).

For one user of one tenant: whether the user is active, their preference for the feature (their own row,
or ``null``: the parent job's defaults apply), the derived jobs of their group with the next run, and
their latest run chains with result counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batcher import ApiRequest, ApiResponse, ApiRoute, ApiRouteError
from handlers.agent_batch.sql import Q

RUNS_SHOWN = 20


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


async def agent_status(reader: Any, *, tenant: str, user: str, feature_type: str | None = None,
                       limit: int = RUNS_SHOWN) -> dict[str, Any]:
    """JSON-able status of a user (``reader``: anything with asyncpg's ``fetch``/``fetchrow``)."""
    found = await reader.fetch(Q["valid_users"], [user])
    active = any(r["tenant_id"] == tenant for r in found)
    preference, jobs = None, []
    if feature_type is not None:
        row = await reader.fetchrow(Q["user_preference"], tenant, user, feature_type)
        if row is not None:
            preference = {k: _iso(row[k]) for k in ("frequency", "time_of_day", "timezone", "template_override",
                                                     "updated_at")}
            jobs = [{"job_name": j["job_name"], "enabled": j["enabled"], "next_run_at": _iso(j["next_run_at"])}
                    for j in await reader.fetch(Q["user_group_jobs"], feature_type, row["frequency"],
                                                row["time_of_day"], row["timezone"])]
    runs = [{"run_id": r["run_id"], "job_name": r["job_name"], "last_run_id": r["last_run_id"],
             "status": r["status"], "finished_at": _iso(r["finished_at"]), "succeeded": r["succeeded"],
             "failed": r["failed"], "written_at": _iso(r["written_at"])}
            for r in await reader.fetch(Q["user_runs"], tenant, user, feature_type, limit)]
    return {"tenant": tenant, "user": user, "feature_type": feature_type, "active": active,
            "preference": preference, "group_jobs": jobs, "runs": runs}


async def agent_status_query(reader: Any, query: Mapping[str, str]) -> dict[str, Any]:
    """The route's entry: ``?tenant=&user=&feature_type=`` (tenant and user required, feature optional);
    ValueError (→ 400) naming what is missing."""
    missing = [name for name in ("tenant", "user") if not query.get(name)]
    if missing:
        raise ValueError(f"missing query parameter(s): {', '.join(missing)}")
    return await agent_status(reader, tenant=query["tenant"], user=query["user"],
                              feature_type=query.get("feature_type") or None)


async def status_route(request: ApiRequest) -> ApiResponse:
    """``GET /api/agent/status``: a missing tenant or user is a 400 naming it, as is an empty or overlong
    value of any parameter."""
    for name in ("tenant", "user", "feature_type"):
        value = request.query.get(name)
        if value is not None and not 1 <= len(value) <= 200:
            raise ApiRouteError(400, "validation_error", f"{name} must have 1 to 200 characters", name)
    try:
        status = await agent_status_query(request.pool, request.query)
    except ValueError as exc:
        raise ApiRouteError(400, "validation_error", str(exc)) from None
    return ApiResponse({"success": True, **status})


def _query_param(name: str, description: str, *, required: bool) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": {"type": "string", "minLength": 1, "maxLength": 200}}


STATUS_ROUTES = (
    ApiRoute("GET", "/api/agent/status", "agentStatus", status_route,
             {"summary": "An agent-batch user's status: active, preference, group jobs, latest runs",
              "parameters": [_query_param("tenant", "the user's tenant", required=True),
                             _query_param("user", "the user id", required=True),
                             _query_param("feature_type", "one feature's preference and group jobs",
                                          required=False)],
              "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {
                  "type": "object", "required": ["success", "tenant", "user", "active", "runs"],
                  "properties": {"success": {"const": True}, "tenant": {"type": "string"},
                                 "user": {"type": "string"}, "feature_type": {"type": ["string", "null"]},
                                 "active": {"type": "boolean"},
                                 "preference": {"type": ["object", "null"]},
                                 "group_jobs": {"type": "array", "items": {"type": "object"}},
                                 "runs": {"type": "array", "items": {"type": "object"}}}}}}}}}),
)
