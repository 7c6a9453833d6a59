"""The built-in handler registry: job type name → handler class.

Third-party packages add handlers through the ``batcher.handlers`` entry-point group (see
:func:`batcher.registry.load_registry`). A half-built handler stays out of this dict until it works.
"""

from __future__ import annotations

from batcher.handler import Handler
from handlers.agent_batch import AgentBatchHandler
from handlers.datasync import DataSyncHandler
from handlers.gsc import GscHandler
from handlers.synthetic import SyntheticHandler
from handlers.usage import UsageAggregationHandler

BUILTIN_HANDLERS: dict[str, type[Handler]] = {
    SyntheticHandler.type: SyntheticHandler,
    DataSyncHandler.type: DataSyncHandler,
    UsageAggregationHandler.type: UsageAggregationHandler,
    GscHandler.type: GscHandler,
    AgentBatchHandler.type: AgentBatchHandler,
}
