"""GET /api/openapi.json: an OpenAPI 3.1 document generated from the pydantic models, covering exactly
the routes the server registers, with the bearer scheme on every mutation and the error envelope."""

from __future__ import annotations

from typing import Any

from batcher.api import CONTEXT
from batcher.openapi import OPERATIONS, handler_routes
from tests.api.conftest import Client


async def test_document_matches_the_served_routes(client: Client) -> None:
    """The document is OpenAPI 3.1.0; its operations are exactly the app's API routes (method and
    path); mutations declare the bearer scheme and 401/403; JSON operations reference component schemas
    that exist; errors use ErrorResponse."""
    response = await client.get("/api/openapi.json")
    doc: dict[str, Any] = await response.json()
    assert response.status == 200 and doc["openapi"] == "3.1.0"
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    api_prefixes = ("/api", "/metrics", "/healthz", "/readyz")
    served = {(r.method, r.resource.canonical) for r in client.app.router.routes()
              if r.resource is not None and r.method != "HEAD" and r.resource.canonical.startswith(api_prefixes)}
    contributed = {(r.method, r.path) for r in handler_routes(client.app[CONTEXT].services.registry)}
    assert contributed >= {("GET", "/api/apps"), ("POST", "/api/apps"), ("DELETE", "/api/apps/{name}")}
    assert documented == served == {(op.method, op.path) for op in OPERATIONS} | contributed
    schemas = doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["operationId"] and "200" in op["responses"], (method, path)
            if method == "post":
                assert op["security"] == [{"bearer": []}] and {"401", "403"} <= set(op["responses"])
            for status, answer in op["responses"].items():
                schema = answer["content"].get("application/json", {}).get("schema", {})
                refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
                for ref in filter(None, refs):
                    assert ref.removeprefix("#/components/schemas/") in schemas, ref
                if status.startswith("4"):
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    body_schema = schemas["ConfigUpdate"]
    assert body_schema["additionalProperties"] is False and "intervalMinutes" in body_schema["properties"]


async def test_document_is_served_without_a_token(make_client: Any) -> None:
    """The document is public like every read, also on a read-only API."""
    client = await make_client(token=None)
    response = await client.get("/api/openapi.json")
    body = await response.json()
    assert response.status == 200 and response.headers["Content-Type"].startswith("application/json")
    assert body["info"]["title"] == "batcher admin API"
