"""The ``agent_batch`` handler (issue 19): fans work out to a processing service, for users or category
items, one request each or one for the whole set, on static or user-chosen (preference) schedules.

Modules: :mod:`.params` (the nine batch types, params), :mod:`.source` (candidates in chunks, one
validation query per chunk), :mod:`.process` (requests, per-item retries, bounded concurrency across
chunks), :mod:`.report` (the context JSON), :mod:`.schedules` (preference groups → derived jobs),
:mod:`.status` (the status view), :mod:`.cache` (TTL cache invalidated on change), :mod:`.handler`.
"""

from __future__ import annotations

from handlers.agent_batch.handler import AgentBatchHandler
from handlers.agent_batch.params import AgentParams, BatchType
from handlers.agent_batch.status import agent_status, agent_status_query

__all__ = ["AgentBatchHandler", "AgentParams", "BatchType", "agent_status", "agent_status_query"]
