"""Enqueue options: validated once, turned into a job record."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ._job import JobRecord, json_encoder, random_bits, uuid7
from ._keys import check_queue_name
from ._task import Task, check_job_type
from .errors import ConfigurationError, PayloadTooLargeError, SerializationError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Payloads are refused above this size (as the original's ErrJobDataTooLarge).
MAX_PAYLOAD_BYTES = 1 << 20
DEFAULT_QUEUE = "default"
_JOB_ID_MAX = 256


def seconds(value: float | timedelta | None, what: str) -> float | None:
    """Normalize a duration given as seconds or a timedelta."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigurationError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def check_job_id(job_id: str) -> str:
    if (
        not isinstance(job_id, str)
        or not job_id
        or len(job_id) > _JOB_ID_MAX
        or not job_id.isprintable()
        or any(c.isspace() for c in job_id)
    ):
        raise ConfigurationError(
            f"invalid job id {job_id!r}: use 1-{_JOB_ID_MAX} printable characters, no spaces"
        )
    return job_id


def encode_payload(payload: Any) -> bytes:
    try:
        data = json_encoder.encode(payload)
    except (TypeError, ValueError, OverflowError) as err:
        raise SerializationError(f"payload cannot be encoded as JSON: {err}") from err
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLargeError(
            f"payload is {len(data)} bytes encoded; the limit is {MAX_PAYLOAD_BYTES} bytes (1 MiB)"
        )
    return data


def build_record(
    task: Task[Any] | str,
    *,
    queue: str | None,
    max_retry: int | None,
    timeout: float | timedelta | None,
    retry_intervals: Sequence[float] | None,
    job_id: str | None,
    meta: Mapping[str, str] | None,
    enqueued_by: str | None,
    at_front: bool,
    unique: bool,
) -> JobRecord:
    """Validate the options of one enqueue and return the record to store."""
    job_type = _job_type(task)
    if unique and job_id is None:
        raise ConfigurationError("unique=True needs an explicit job_id (the uniqueness key)")
    if max_retry is not None and (
        isinstance(max_retry, bool) or not isinstance(max_retry, int) or max_retry < 0
    ):
        raise ConfigurationError(f"max_retry must be an int >= 0, got {max_retry!r}")
    timeout_s = seconds(timeout, "timeout")
    if timeout_s is not None and timeout_s <= 0:
        raise ConfigurationError("timeout must be > 0 (omit it to use the pool or global timeout)")
    intervals = None
    if retry_intervals is not None:
        intervals = [seconds(i, "retry interval") or 0.0 for i in retry_intervals]
        if not intervals:
            raise ConfigurationError("retry_intervals must not be empty (omit it instead)")
    if meta is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise ConfigurationError("meta must map str to str")
    return JobRecord(
        id=uuid7() if job_id is None else check_job_id(job_id),
        type=job_type,
        queue=_queue(task, queue),
        max_retry=max_retry,
        timeout=timeout_s,
        retry_intervals=intervals,
        meta=dict(meta) if meta else None,
        enqueued_by=enqueued_by,
        unique=unique,
        at_front=at_front,
    )


def plain_record(task: Task[Any] | str) -> JobRecord:
    """The record of a job enqueued without any option (``build_record`` with every
    option left out, minus its checks: the common batch item)."""
    return JobRecord(id=uuid7(), type=_job_type(task), queue=_queue(task, None))


def _job_type(task: Task[Any] | str) -> str:
    return task.name if isinstance(task, Task) else check_job_type(task)


def _queue(task: Task[Any] | str, queue: str | None) -> str:
    """The queue asked for, else the task's, else the default one (validated)."""
    if queue is None:
        queue = (task.queue if isinstance(task, Task) else None) or DEFAULT_QUEUE
    return check_queue_name(queue)


def encode_record(rec: JobRecord) -> bytes:
    return json_encoder.encode(rec)


def new_nonce() -> str:
    """A fresh token telling one enqueue call from any other (replay detection)."""
    return f"{random_bits(64):016x}"
