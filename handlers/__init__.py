"""The built-in handler registry: job type name → handler class.

Third-party packages add handlers through the ``batcher.handlers`` entry-point group (see
:func:`batcher.registry.load_registry`). A half-built handler stays out of this dict until it works.
"""

from __future__ import annotations

from batcher.handler import Handler
from handlers.agent_batch import AgentBatchHandler
from handlers.datasync import DataSyncHandler
from handlers.dockerhub import DockerHubPullHandler
from handlers.gsc import GscHandler
from handlers.hubspot import HubSpotHandler
from handlers.synthetic import SyntheticHandler
from handlers.tracked_apps import TrackedAppsHandler
from handlers.usage import UsageAggregationHandler

BUILTIN_HANDLERS: dict[str, type[Handler]] = {
    SyntheticHandler.type: SyntheticHandler,
    DataSyncHandler.type: DataSyncHandler,
    UsageAggregationHandler.type: UsageAggregationHandler,
    GscHandler.type: GscHandler,
    HubSpotHandler.type: HubSpotHandler,
    DockerHubPullHandler.type: DockerHubPullHandler,
    TrackedAppsHandler.type: TrackedAppsHandler,
    AgentBatchHandler.type: AgentBatchHandler,
}
