"""The run's context in the original format (``batch_contexts.context`` and ``batch_runs.result``).

```
{"results": {"metadata": {batch_type, template, feature_type, category_type, categories, tenant_id,
                          group, run_id, user_references: [{user_id, tenant_id}]},
             "items": {"valid_users": [{user_id, tenant_id}], "invalid_users": [user_id],
                       "filtered_items": n}},
 "validation": {"total", "valid", "invalid"},
 "progress": {"processed", "succeeded", "failed", "total", "percentage"}}
```

``validation`` counts distinct referenced users (the users processed, the owners of category items, the
distribution). ``user_references`` are the valid distribution users, or the valid users when the job
names no distribution. ``progress`` counts users (user types) or items (category types); ``total``
starts as the candidates' count and drops as validation filters candidates out (preference category
types: it grows as the group's items are read). Lists hold at most ``context_list_limit`` entries; the
counts stay exact. A resumed run counts the items it skips (succeeded before) as processed again, so
its context ends as an uninterrupted run's would.
"""

from __future__ import annotations

from typing import Any

from handlers.agent_batch.params import AgentParams
from handlers.agent_batch.source import Chunk


class Report:
    """Accumulates validation and progress; :meth:`context` renders the JSON."""

    def __init__(self, params: AgentParams, run_id: int, expected: int) -> None:
        self.p = params
        self.run_id = run_id
        self.expected = expected
        self.valid: dict[str, str] = {}
        self.invalid: dict[str, None] = {}
        self.distribution: dict[str, str] = {}
        self.dropped = 0
        self.seen = 0
        self.filtered_items = 0
        self.succeeded = 0
        self.failed = 0

    def add_distribution(self, valid: dict[str, str], invalid: list[str]) -> None:
        self.distribution.update(valid)
        self.valid.update(valid)
        self.invalid.update(dict.fromkeys(invalid))

    def add_chunk(self, chunk: Chunk) -> None:
        self.valid.update(dict(chunk.valid_users))
        self.invalid.update(dict.fromkeys(chunk.invalid_users))
        self.filtered_items += chunk.filtered_items
        self.dropped += chunk.filtered_items if self.p.batch_type.categories else len(chunk.invalid_users)
        self.seen += len(chunk.units)

    def add_outcome(self, status: str, units: int = 1) -> None:
        if status == "succeeded":
            self.succeeded += units
        else:
            self.failed += units

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed

    @property
    def total(self) -> int:
        return max(self.expected - self.dropped, self.seen, self.processed)

    def recipients(self, owners: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """(tenant, user) pairs that get a row of a batch result: the valid distribution, else the owners,
        else one row for nobody."""
        if self.distribution:
            return sorted((t, u) for u, t in self.distribution.items())
        return sorted(set(owners)) or [("", "")]

    def context(self) -> dict[str, Any]:
        cap = self.p.context_list_limit
        refs = self.distribution or self.valid
        total = self.total
        return {
            "results": {
                "metadata": {**self._metadata(),
                             "user_references": [{"user_id": u, "tenant_id": t}
                                                 for u, t in list(refs.items())[:cap]]},
                "items": {"valid_users": [{"user_id": u, "tenant_id": t} for u, t in list(self.valid.items())[:cap]],
                          "invalid_users": list(self.invalid)[:cap], "filtered_items": self.filtered_items},
            },
            "validation": {"total": len(self.valid) + len(self.invalid), "valid": len(self.valid),
                           "invalid": len(self.invalid)},
            "progress": {"processed": self.processed, "succeeded": self.succeeded, "failed": self.failed,
                         "total": total,
                         "percentage": round(100.0 * self.processed / total, 1) if total else 100.0},
        }

    def _metadata(self) -> dict[str, Any]:
        p = self.p
        return {"batch_type": p.batch_type.value, "template": p.template, "feature_type": p.feature_type,
                "category_type": p.category_type, "categories": list(p.categories), "tenant_id": p.tenant_id,
                "group": p.group.model_dump() if p.group else None, "run_id": self.run_id}
