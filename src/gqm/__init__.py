"""gqm: a Redis-backed job queue on anyio, for asyncio and trio.

The public API is exactly ``__all__``; everything else is internal.
"""

from __future__ import annotations

from ._admin import PoolInfo, PoolStatus, QueueInfo, ServerInfo, Totals
from ._cron_runtime import CronEntry, OverlapPolicy
from ._dag import DagGraph, DagNode
from ._job import ACTIVE_STATES, TERMINAL_STATES, Job, JobStatus
from ._pool import DequeueStrategy, PoolConfig
from ._runner import Handler, Middleware
from ._task import Task, task
from ._version import __version__
from .client import MAX_BATCH, BatchItem, Client
from .config import ConfigError, GqmConfig, load_config, load_config_file
from .cron import CronError, CronSchedule
from .errors import (
    BatchTooLargeError,
    ConfigurationError,
    DependencyError,
    DuplicateJobError,
    GqmError,
    JobFailedError,
    JobNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    RedisConnectionError,
    RedisError,
    RedisReplyError,
    SerializationError,
    ServerStateError,
    SkipRetry,
)
from .retry import Backoff, RetryPolicy
from .server import Server

__all__ = [
    "ACTIVE_STATES",
    "MAX_BATCH",
    "TERMINAL_STATES",
    "Backoff",
    "BatchItem",
    "BatchTooLargeError",
    "Client",
    "ConfigError",
    "ConfigurationError",
    "CronEntry",
    "CronError",
    "CronSchedule",
    "DagGraph",
    "DagNode",
    "DependencyError",
    "DequeueStrategy",
    "DuplicateJobError",
    "GqmConfig",
    "GqmError",
    "Handler",
    "Job",
    "JobFailedError",
    "JobNotFoundError",
    "JobStatus",
    "Middleware",
    "NotFoundError",
    "OverlapPolicy",
    "PayloadTooLargeError",
    "PoolConfig",
    "PoolInfo",
    "PoolStatus",
    "QueueInfo",
    "RedisConnectionError",
    "RedisError",
    "RedisReplyError",
    "RetryPolicy",
    "SerializationError",
    "Server",
    "ServerInfo",
    "ServerStateError",
    "SkipRetry",
    "Task",
    "Totals",
    "__version__",
    "load_config",
    "load_config_file",
    "task",
]
