"""HubSpot CRM search semantics for the fake HubSpot server: the request limits HubSpot answers 400 to,
filters as predicates on stored records, and where a filtered search can start in time order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Filter = Callable[[dict[str, Any]], bool]


def stamp_property(object_type: str) -> str:
    return "lastmodifieddate" if object_type == "contacts" else "hs_lastmodifieddate"


def search_problem(body: Any) -> str | None:
    """Why HubSpot would answer a search body 400 (its documented limits), or None."""
    if not isinstance(body, dict):
        return "Invalid input JSON"
    groups = body.get("filterGroups", [])
    if len(groups) > 5 or any(len(g.get("filters", [])) > 6 for g in groups):
        return "too many filter groups or filters (at most 5 groups of 6 filters)"
    if len(body.get("sorts") or []) > 1:
        return "only one sort is allowed"
    if not 1 <= int(body.get("limit", 10)) <= 200:
        return "limit must be between 1 and 200"
    return None


def _number(record: dict[str, Any], prop: str, object_type: str) -> int | None:
    if prop == stamp_property(object_type):
        return int(record["ms"])
    if prop == "hs_object_id":
        return int(record["id"])
    return None


def compile_filter(spec: dict[str, Any], object_type: str) -> Filter:
    """One filter as a predicate on a stored record (numbers for dates and ids, else strings)."""
    prop, op = spec["propertyName"], spec["operator"]
    numeric = prop in ("hs_object_id", stamp_property(object_type))

    def value_of(record: dict[str, Any]) -> Any:
        return _number(record, prop, object_type) if numeric else record["props"].get(prop)

    cast: Callable[[Any], Any] = int if numeric else str
    if op == "HAS_PROPERTY":
        return lambda r: value_of(r) is not None
    if op in ("IN", "NOT_IN"):
        values = {cast(v) for v in spec.get("values", [])}
        return (lambda r: value_of(r) in values) if op == "IN" else (lambda r: value_of(r) not in values)
    target = cast(spec["value"])
    compare: dict[str, Callable[[Any], bool]] = {
        "EQ": lambda v: v == target, "NEQ": lambda v: v != target, "GT": lambda v: v > target,
        "GTE": lambda v: v >= target, "LT": lambda v: v < target, "LTE": lambda v: v <= target}
    test = compare[op]
    return lambda r: (v := value_of(r)) is not None and test(v)


def lower_bound(*, groups_raw: list[dict[str, Any]], object_type: str) -> int:
    """The smallest modification time any filter group can match (a bisect start, not a filter)."""
    stamp = stamp_property(object_type)
    bounds = []
    for group in groups_raw:
        lows = [int(f["value"]) for f in group.get("filters", [])
                if f.get("propertyName") == stamp and f.get("operator") in ("EQ", "GT", "GTE")]
        bounds.append(max(lows) if lows else 0)
    return min(bounds) if bounds else 0
