"""batcher: an async scheduler daemon streaming ingestion jobs into PostgreSQL with exactly-once checkpoints.

This package's top level is the handler-author API. Runtime modules (scheduler, runner, store…) are
internal and imported lazily by the CLI.
"""

from batcher.errors import (
    BatcherError,
    ConfigError,
    PermanentError,
    RunCancelledError,
    TransientError,
)
from batcher.extension import (
    ApiRequest,
    ApiResponse,
    ApiRoute,
    ApiRouteError,
    CliCommand,
    CommandContext,
    CommandServices,
)
from batcher.handler import (
    NO_CHECKPOINT,
    Batch,
    CheckpointScope,
    ConflictPolicy,
    DerivedJob,
    Handler,
    HandlerParams,
    HttpClient,
    HttpReply,
    RateLimit,
    Rejected,
    RunContext,
    Secret,
    Stream,
)
from batcher.jsoncodec import dumps as json_dumps
from batcher.jsoncodec import loads as json_loads
from batcher.oauth import OAuth2Credentials

__version__ = "0.1.0"

__all__ = [
    "NO_CHECKPOINT",
    "ApiRequest",
    "ApiResponse",
    "ApiRoute",
    "ApiRouteError",
    "Batch",
    "BatcherError",
    "CheckpointScope",
    "CliCommand",
    "CommandContext",
    "CommandServices",
    "ConfigError",
    "ConflictPolicy",
    "DerivedJob",
    "Handler",
    "HandlerParams",
    "HttpClient",
    "HttpReply",
    "OAuth2Credentials",
    "PermanentError",
    "RateLimit",
    "Rejected",
    "RunCancelledError",
    "RunContext",
    "Secret",
    "Stream",
    "TransientError",
    "__version__",
    "json_dumps",
    "json_loads",
]
