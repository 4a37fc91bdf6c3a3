"""Every exception gqm raises, under one root.

::

    GqmError                     root: ``except gqm.GqmError`` catches everything below
    ├── ConfigurationError       invalid arguments or configuration
    ├── PayloadTooLargeError     a payload over the 1 MiB limit
    ├── SerializationError       a payload or result that cannot be encoded or decoded
    ├── BatchTooLargeError       more than 1000 jobs in one ``enqueue_batch``
    ├── DuplicateJobError        a job id that is already taken
    ├── DependencyError          an unknown parent, or a dependency cycle
    ├── NotFoundError            no such queue, server, pool or cron entry
    │   └── JobNotFoundError     no job with that id (or it has expired)
    ├── JobFailedError           ``Client.result`` on a job that ended without success
    ├── ServerStateError         an operation that the server's state does not allow
    └── RedisError               a problem talking to Redis
        ├── RedisConnectionError the connection failed or was lost
        └── RedisReplyError      Redis answered with an error

    SkipRetry                    raised by handlers: send the job to the DLQ at once

``SkipRetry`` is control flow, not an error of gqm, so it derives from ``Exception``.
"""

from __future__ import annotations


class GqmError(Exception):
    """The root of every error that gqm raises."""


class ConfigurationError(GqmError, ValueError):
    """Raised when an argument or a setting is invalid."""


class PayloadTooLargeError(GqmError, ValueError):
    """Raised when an encoded payload exceeds the size limit (1 MiB)."""


class SerializationError(GqmError, ValueError):
    """Raised when a payload or result cannot be encoded or decoded."""


class BatchTooLargeError(GqmError, ValueError):
    """Raised when ``enqueue_batch`` is given more jobs than fit in one batch."""


class DuplicateJobError(GqmError):
    """Raised when enqueueing a job id that is already taken.

    Without ``unique``, an id is taken while its job is live (not in a terminal state);
    with ``unique=True``, also while its finished record is retained.
    """

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id!r} already exists (status {status})")
        self.job_id = job_id
        self.status = status


class DependencyError(GqmError, ValueError):
    """Raised when ``depends_on`` names an unknown job or would create a cycle."""


class NotFoundError(GqmError, LookupError):
    """Raised when a queue, server, pool or cron entry does not exist (or a job: see
    :class:`JobNotFoundError`). A server or pool exists while its heartbeat is live."""


class JobNotFoundError(NotFoundError):
    """Raised when no job has the given id (it never existed, or its record expired)."""


class JobFailedError(GqmError):
    """Raised by ``Client.result`` when the job ended in a state other than completed."""

    def __init__(self, job_id: str, status: str, error: str | None) -> None:
        super().__init__(f"job {job_id!r} ended as {status}: {error or 'no error recorded'}")
        self.job_id = job_id
        self.status = status
        self.error = error


class ServerStateError(GqmError, RuntimeError):
    """Raised when an operation is not allowed in the server's current state
    (for example ``Server.use`` after the server started)."""


class RedisError(GqmError):
    """Raised on a problem talking to Redis."""


class RedisConnectionError(RedisError, ConnectionError):
    """Raised when the connection to Redis fails or is lost."""


class RedisReplyError(RedisError):
    """Raised (or returned in a pipeline) when Redis answers with an error reply."""

    @property
    def is_noscript(self) -> bool:
        """True when Redis does not know the script's SHA (after a restart or flush)."""
        return str(self).startswith("NOSCRIPT")

    @property
    def is_oom(self) -> bool:
        """True when Redis refused a write because it is at ``maxmemory`` (with the
        ``noeviction`` policy): the call did nothing; try again once memory is freed."""
        return str(self).startswith("OOM")


class SkipRetry(Exception):
    """Raise from a handler to send the job to the dead-letter queue without retrying.

    ``raise gqm.SkipRetry("card declined")`` or ``raise gqm.SkipRetry() from err``.
    """
