"""The job record, its JSON form, the Job handle, the status sets and uuid7 ids."""

from __future__ import annotations

import itertools
import os
import random
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gqm
from gqm import _job
from gqm._job import Job, JobRecord, record_decoder, record_encoder, uuid7
from gqm._options import new_nonce
from gqm.client import _record_from_options

# -- uuid7 -----------------------------------------------------------------------------


def _ms_of(value: str) -> int:
    return uuid.UUID(value).int >> 80


def test_uuid7_is_a_version_7_rfc_4122_uuid() -> None:
    """uuid7() returns a canonical lowercase UUID string of version 7, RFC 4122 variant."""
    for _ in range(1000):
        value = uuid7()
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_uuid7_embeds_the_current_unix_milliseconds() -> None:
    """The first 48 bits of a uuid7 are the Unix time in milliseconds."""
    before = datetime.now(UTC).timestamp() * 1000
    ms = _ms_of(uuid7())
    after = datetime.now(UTC).timestamp() * 1000
    # The id may run a few ms ahead of the clock after a counter overflow.
    assert before - 1 <= ms <= after + 50


def test_uuid7_strictly_increasing_and_unique_in_a_tight_loop() -> None:
    """100k ids made back to back are strictly increasing, as strings and as integers."""
    ids = [uuid7() for _ in range(100_000)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    ints = [uuid.UUID(i).int for i in ids]
    assert all(a < b for a, b in itertools.pairwise(ints))
    assert len(set(ids)) == len(ids)


def test_uuid7_keeps_order_with_a_frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a stopped clock, ids still increase: the counter rolls over into the next ms."""
    frozen_ms = 1_000_000_000_000  # in the past, so module state stays monotonic afterwards
    monkeypatch.setattr(_job, "_last_ms", 0)
    monkeypatch.setattr(_job, "_counter", 0)
    monkeypatch.setattr(time, "time_ns", lambda: frozen_ms * 1_000_000)
    ids = [uuid7() for _ in range(10_000)]  # more than the 4096 values of the 12-bit counter
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert _ms_of(ids[0]) == frozen_ms
    assert _ms_of(ids[-1]) > frozen_ms
    assert all(uuid.UUID(i).version == 7 for i in ids)


def test_uuid7_keeps_order_when_the_clock_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the wall clock steps backwards, ids keep increasing."""
    now = [2_000_000_000_000]
    monkeypatch.setattr(_job, "_last_ms", 0)
    monkeypatch.setattr(_job, "_counter", 0)
    monkeypatch.setattr(time, "time_ns", lambda: now[0] * 1_000_000)
    first = uuid7()
    now[0] -= 60_000
    second = uuid7()
    assert first < second
    assert _ms_of(second) == 2_000_000_000_000


def test_forked_children_draw_other_ids_and_nonces() -> None:
    """The generator behind ids and nonces is seeded again in a forked child, and an
    application's ``random.seed`` does not touch it: parent and child never draw alike."""
    random.seed(42)
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; the child here only
        # draws two values and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report its draws and leave at once
        try:
            os.write(write_end, f"{new_nonce()} {uuid7()}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_nonce, child_id = pipe.read().split()
    os.waitpid(pid, 0)
    random.seed(42)
    nonce, job_id = new_nonce(), uuid7()
    assert len(nonce) == len(child_nonce) == 16
    assert nonce != child_nonce
    assert job_id[-12:] != child_id[-12:]  # the last 48 of the 62 random bits


# -- JobRecord JSON --------------------------------------------------------------------


def _full_record() -> JobRecord:
    return JobRecord(
        id="0190f2a0-0000-7000-8000-000000000000",
        type="email.send",
        queue="emails",
        status="processing",
        attempt=2,
        retry_count=1,
        recoveries=1,
        max_retry=5,
        timeout=30.5,
        retry_intervals=[1.0, 10.0],
        meta={"tenant": "acme"},
        enqueued_by="api-1",
        unique=True,
        at_front=True,
        created_at=1_700_000_000_000,
        scheduled_at=1_700_000_001_000,
        started_at=1_700_000_002_000,
        completed_at=1_700_000_003_000,
        error="boom",
        worker_id="w1",
        token="tok",
    )


def test_record_round_trip() -> None:
    """A record with every field set survives encode then decode unchanged."""
    rec = _full_record()
    assert record_decoder.decode(record_encoder.encode(rec)) == rec


def test_minimal_record_encodes_only_required_fields() -> None:
    """A record with default values encodes to just id, type and queue (no nulls)."""
    rec = JobRecord(id="j", type="t", queue="q")
    data = record_encoder.encode(rec)
    assert msgspec.json.decode(data) == {"id": "j", "type": "t", "queue": "q"}
    assert b"null" not in data
    assert record_decoder.decode(data) == rec


def test_explicit_none_and_default_values_are_omitted() -> None:
    """Fields set to None or to their default are left out of the JSON."""
    rec = JobRecord(
        id="j", type="t", queue="q", status="ready", attempt=0, max_retry=None, error=None
    )
    assert msgspec.json.decode(record_encoder.encode(rec)) == {"id": "j", "type": "t", "queue": "q"}


def test_full_record_json_has_no_null() -> None:
    """Non-default fields are encoded, and the JSON still holds no null."""
    data = record_encoder.encode(_full_record())
    assert b"null" not in data
    assert msgspec.json.decode(data)["max_retry"] == 5


def test_decoding_ignores_unknown_fields() -> None:
    """Fields written by a newer version are ignored when decoding (rolling deploys)."""
    data = (
        b'{"id":"j","type":"t","queue":"q","status":"retry","added_in_v9":{"x":[1]},"priority":3}'
    )
    rec = record_decoder.decode(data)
    assert rec == JobRecord(id="j", type="t", queue="q", status="retry")


def test_decoding_requires_the_identity_fields() -> None:
    """A record without its queue is refused by the decoder."""
    with pytest.raises(msgspec.ValidationError, match="queue"):
        record_decoder.decode(b'{"id":"j","type":"t"}')


# -- Job handle ------------------------------------------------------------------------


def test_job_from_record_converts_times_and_status() -> None:
    """_from_record gives aware UTC datetimes, a JobStatus and the given payload/result."""
    job = Job._from_record(_full_record(), {"to": "a@x"}, result=[1, 2])
    assert job.status is gqm.JobStatus.PROCESSING
    assert isinstance(job.status, gqm.JobStatus)
    assert job.created_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert job.completed_at == job.created_at + timedelta(seconds=3)
    for stamp in (job.created_at, job.scheduled_at, job.started_at, job.completed_at):
        assert stamp is not None
        assert stamp.tzinfo is not None
        assert stamp.utcoffset() == timedelta(0)
    assert job.payload == {"to": "a@x"}
    assert job.result == [1, 2]
    assert job.retry_intervals == (1.0, 10.0)
    assert job.meta == {"tenant": "acme"}
    assert (job.id, job.type, job.queue) == (
        "0190f2a0-0000-7000-8000-000000000000",
        "email.send",
        "emails",
    )
    assert (job.attempt, job.retry_count, job.recoveries, job.max_retry) == (2, 1, 1, 5)
    assert (job.timeout, job.enqueued_by, job.unique) == (30.5, "api-1", True)
    assert (job.error, job.worker_id) == ("boom", "w1")


def test_job_from_minimal_record() -> None:
    """Absent times stay None, absent meta becomes an empty dict."""
    job = Job._from_record(JobRecord(id="j", type="t", queue="q", status="dead_letter"), None)
    assert job.status is gqm.JobStatus.DEAD_LETTER
    assert (job.created_at, job.scheduled_at, job.started_at, job.completed_at) == (None,) * 4
    assert job.meta == {}
    assert job.retry_intervals is None
    assert job.result is None


# Up to 2**33 s (year 2242): beyond it _ts's float division (ms / 1000) loses sub-millisecond
# precision and dates come out a microsecond early (see the report on gqm._job._ts).
@given(ms=st.integers(min_value=0, max_value=2**33 * 1000 - 1))
def test_job_timestamps_are_exact_milliseconds(ms: int) -> None:
    """Every Redis millisecond timestamp converts to the exact UTC datetime, no rounding."""
    rec = JobRecord(id="j", type="t", queue="q", started_at=ms)
    started = Job._from_record(rec, None).started_at
    assert started == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"queue": "emails"},
        {"max_retry": 2},
        {"timeout": 1.5},
        {"retry_intervals": [1.0, 2.0]},
        {"meta": {"k": "v"}},
        {"enqueued_by": "api"},
        {"job_id": "order-1", "unique": True},
        {"at_front": True},
    ],
    ids=lambda options: ",".join(options) or "none",
)
@pytest.mark.parametrize("status", ["ready", "scheduled", "deferred"])
def test_enqueued_job_is_the_job_of_its_record(options: dict[str, Any], status: str) -> None:
    """The short way of building the job an enqueue returns gives the same job."""
    rec = _record_from_options("t", options)  # the records of enqueue_batch's items
    rec.status = status
    assert Job._enqueued(rec, {"p": 1}) == Job._from_record(rec, {"p": 1})
    if status == "deferred":
        rec.depends_on, rec.pending, rec.allow_failure = ["a"], {"a": 1}, True
        assert Job._enqueued(rec, None) == Job._from_record(rec, None)


def test_job_is_frozen() -> None:
    """A Job handle cannot be modified."""
    job = Job._from_record(JobRecord(id="j", type="t", queue="q"), None)
    with pytest.raises(AttributeError):
        job.status = gqm.JobStatus.COMPLETED  # type: ignore[misc]


# -- status sets -----------------------------------------------------------------------


def test_terminal_and_active_states_partition_job_status() -> None:
    """Every JobStatus is in exactly one of TERMINAL_STATES and ACTIVE_STATES."""
    terminal, active = gqm.TERMINAL_STATES, gqm.ACTIVE_STATES
    assert terminal.isdisjoint(active)
    assert terminal | active == set(gqm.JobStatus)
    assert terminal
    assert active


def test_status_sets_contents() -> None:
    """Completed, dead-letter, canceled, stopped and failed are terminal; the rest active."""
    assert {s.value for s in gqm.TERMINAL_STATES} == {
        "completed",
        "dead_letter",
        "canceled",
        "stopped",
        "failed",
    }
    assert {s.value for s in gqm.ACTIVE_STATES} == {
        "ready",
        "scheduled",
        "deferred",
        "processing",
        "retry",
    }
    assert isinstance(gqm.TERMINAL_STATES, frozenset)
    assert isinstance(gqm.ACTIVE_STATES, frozenset)
