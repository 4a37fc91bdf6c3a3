"""Enqueue options, payload encoding, job ids, queue names and the Redis key layout."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

import gqm
from gqm._keys import Keys, QueueKeys, check_queue_name
from gqm._options import (
    DEFAULT_QUEUE,
    MAX_PAYLOAD_BYTES,
    build_record,
    check_job_id,
    encode_payload,
)

if TYPE_CHECKING:
    from gqm._job import JobRecord


def _record(task: gqm.Task[Any] | str = "t", **options: Any) -> JobRecord:
    """build_record with every option defaulted, as ``Client.enqueue`` passes them."""
    defaults: dict[str, Any] = {
        "queue": None,
        "max_retry": None,
        "timeout": None,
        "retry_intervals": None,
        "job_id": None,
        "meta": None,
        "enqueued_by": None,
        "at_front": False,
        "unique": False,
    }
    return build_record(task, **(defaults | options))


# -- build_record ----------------------------------------------------------------------


def test_plain_record_defaults() -> None:
    """Without options, a record goes to the "default" queue with a generated id."""
    rec = _record("email.send")
    assert DEFAULT_QUEUE == "default"
    assert rec.queue == "default"
    assert rec.type == "email.send"
    assert rec.status == "ready"
    assert len(rec.id) == 36
    assert rec.max_retry is None
    assert rec.timeout is None
    assert rec.retry_intervals is None
    assert rec.meta is None
    assert rec.unique is False
    assert rec.at_front is False


def test_generated_ids_differ() -> None:
    """Two records built without job_id get different ids."""
    assert _record().id != _record().id


def test_task_handle_queue_is_the_default_destination() -> None:
    """A task declared with ``queue=`` sends there unless the enqueue names another queue."""
    handle = gqm.task("t", queue="emails")
    assert _record(handle).queue == "emails"
    assert _record(handle, queue="urgent").queue == "urgent"
    assert _record(handle).type == "t"


def test_task_handle_without_queue_uses_default() -> None:
    """A task declared without a queue goes to "default", or to an explicit queue."""
    handle = gqm.task("t")
    assert _record(handle).queue == "default"
    assert _record(handle, queue="other").queue == "other"
    assert _record("t", queue="other").queue == "other"


def test_task_with_invalid_queue_is_refused() -> None:
    """``gqm.task`` validates its queue name at declaration time."""
    with pytest.raises(gqm.ConfigurationError):
        gqm.task("t", queue="bad queue")


@pytest.mark.parametrize("name", ["", "x" * 257, "tab\there\x00"])
def test_invalid_job_type_is_refused(name: str) -> None:
    """Job type names must be 1-256 printable characters."""
    with pytest.raises(gqm.ConfigurationError):
        _record(name)


def test_unique_needs_job_id() -> None:
    """``unique=True`` without an explicit job_id raises ConfigurationError."""
    with pytest.raises(gqm.ConfigurationError, match="job_id"):
        _record(unique=True)


def test_unique_with_job_id_is_kept() -> None:
    """``unique=True`` with a job_id stores that id and the unique flag."""
    rec = _record(unique=True, job_id="order-42")
    assert rec.id == "order-42"
    assert rec.unique is True


@pytest.mark.parametrize("max_retry", [-1, -100, 1.5, "3"])
def test_invalid_max_retry(max_retry: Any) -> None:
    """max_retry must be an int >= 0."""
    with pytest.raises(gqm.ConfigurationError, match="max_retry"):
        _record(max_retry=max_retry)


def test_zero_max_retry_is_valid() -> None:
    """``max_retry=0`` (never retry) is accepted and stored."""
    assert _record(max_retry=0).max_retry == 0


@pytest.mark.parametrize(
    "timeout",
    [0, 0.0, -1, -0.001, math.nan, math.inf, timedelta(0), timedelta(seconds=-1), "5"],
    ids=repr,
)
def test_invalid_timeout(timeout: Any) -> None:
    """A timeout must be a finite number of seconds > 0 (or a positive timedelta)."""
    with pytest.raises(gqm.ConfigurationError, match="timeout"):
        _record(timeout=timeout)


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [(1, 1.0), (0.25, 0.25), (timedelta(minutes=2, milliseconds=500), 120.5)],
)
def test_valid_timeout_is_seconds(timeout: float | timedelta, expected: float) -> None:
    """A valid timeout is stored as float seconds."""
    stored = _record(timeout=timeout).timeout
    assert stored == expected
    assert type(stored) is float


def test_empty_retry_intervals_refused() -> None:
    """An empty retry_intervals list raises ConfigurationError."""
    with pytest.raises(gqm.ConfigurationError, match="retry_intervals"):
        _record(retry_intervals=[])


@pytest.mark.parametrize("intervals", [[-1], [1, math.nan], [math.inf]], ids=repr)
def test_invalid_retry_intervals(intervals: list[float]) -> None:
    """Each retry interval must be a finite number of seconds >= 0."""
    with pytest.raises(gqm.ConfigurationError):
        _record(retry_intervals=intervals)


def test_retry_intervals_become_float_seconds() -> None:
    """Retry intervals (numbers or timedeltas) are stored as float seconds."""
    rec = _record(retry_intervals=[0, 1, timedelta(seconds=90)])
    assert rec.retry_intervals == [0.0, 1.0, 90.0]


@pytest.mark.parametrize(
    "meta", [{"a": 1}, {"a": None}, {"a": b"x"}, {1: "a"}, {"a": "ok", "b": ["x"]}], ids=repr
)
def test_meta_must_map_str_to_str(meta: dict[Any, Any]) -> None:
    """meta with a non-str key or value raises ConfigurationError."""
    with pytest.raises(gqm.ConfigurationError, match="meta"):
        _record(meta=meta)


def test_meta_is_copied() -> None:
    """Valid meta is stored as a copy; empty meta is stored as absent."""
    meta = {"tenant": "acme"}
    rec = _record(meta=meta)
    meta["tenant"] = "changed"
    assert rec.meta == {"tenant": "acme"}
    assert _record(meta={}).meta is None


def test_other_options_are_stored() -> None:
    """enqueued_by and at_front are carried into the record."""
    rec = _record(enqueued_by="api-1", at_front=True)
    assert rec.enqueued_by == "api-1"
    assert rec.at_front is True


@pytest.mark.parametrize(
    "queue", ["", "bad queue", "a{b", "a}b", "a\nb", "a*", "x" * 129], ids=repr
)
def test_build_record_refuses_invalid_queue(queue: str) -> None:
    """An invalid explicit queue name is refused by build_record."""
    with pytest.raises(gqm.ConfigurationError, match="queue"):
        _record(queue=queue)


@pytest.mark.parametrize("job_id", ["a b", "a\nb", "x" * 257], ids=repr)
def test_build_record_refuses_invalid_job_id(job_id: str) -> None:
    """An invalid explicit job id is refused by build_record."""
    with pytest.raises(gqm.ConfigurationError, match="job id"):
        _record(job_id=job_id)


# -- job ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    ["", " ", "a b", "a\nb", "a\tb", "trailing ", "nul\x00", "nbsp\u00a0x", "x" * 257, 42, None],
    ids=repr,
)
def test_check_job_id_refuses(job_id: Any) -> None:
    """Job ids must be 1-256 printable characters without whitespace."""
    with pytest.raises(gqm.ConfigurationError):
        check_job_id(job_id)


@pytest.mark.parametrize(
    "job_id", ["a", "order-42", "user:7/report.pdf", "ünïcødé-✓", "x" * 256], ids=repr
)
def test_check_job_id_accepts(job_id: str) -> None:
    """Printable ids of up to 256 characters are returned unchanged."""
    assert check_job_id(job_id) == job_id


# -- queue names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "x" * 129, "{a}", "a{", "a}", "a b", "a\n", "\na", "a*", "ü", "a/b", None, 5],
    ids=repr,
)
def test_check_queue_name_refuses(name: Any) -> None:
    """Queue names must be 1-128 characters from ``A-Z a-z 0-9 . _ : -``."""
    with pytest.raises(gqm.ConfigurationError):
        check_queue_name(name)


@pytest.mark.parametrize("name", ["a.b:c-d_e", "x" * 128, "default", "Q1", "-"], ids=repr)
def test_check_queue_name_accepts(name: str) -> None:
    """Valid queue names are returned unchanged."""
    assert check_queue_name(name) == name


# -- payloads --------------------------------------------------------------------------


def test_payload_of_exactly_one_mib_is_accepted() -> None:
    """A payload whose JSON encoding is exactly 1 MiB is accepted."""
    payload = "x" * (MAX_PAYLOAD_BYTES - 2)  # the two quotes make it exactly 1 MiB
    data = encode_payload(payload)
    assert MAX_PAYLOAD_BYTES == 1024 * 1024
    assert len(data) == MAX_PAYLOAD_BYTES


def test_payload_one_byte_over_one_mib_is_refused() -> None:
    """A payload whose JSON encoding is 1 MiB + 1 byte raises PayloadTooLargeError."""
    payload = "x" * (MAX_PAYLOAD_BYTES - 1)
    assert len(msgspec.json.encode(payload)) == MAX_PAYLOAD_BYTES + 1
    with pytest.raises(gqm.PayloadTooLargeError) as info:
        encode_payload(payload)
    assert isinstance(info.value, gqm.GqmError)
    assert str(MAX_PAYLOAD_BYTES + 1) in str(info.value)


def test_payload_size_counts_encoded_bytes_not_characters() -> None:
    """The limit applies to encoded bytes: multi-byte characters count in full."""
    payload = "é" * (MAX_PAYLOAD_BYTES // 2)  # 2 bytes each in UTF-8: 1 MiB + 2 quotes
    with pytest.raises(gqm.PayloadTooLargeError):
        encode_payload(payload)


@pytest.mark.parametrize(
    "payload",
    [object(), {"when": lambda: 0}, [1, {"k": {1, object()}}]],
    ids=["object", "function-in-dict", "nested-object"],
)
def test_unencodable_payload_raises_serialization_error(payload: Any) -> None:
    """A payload msgspec cannot encode raises SerializationError (not TypeError)."""
    with pytest.raises(gqm.SerializationError) as info:
        encode_payload(payload)
    assert isinstance(info.value, gqm.GqmError)
    assert isinstance(info.value.__cause__, TypeError)


def test_payload_is_json() -> None:
    """Payloads are encoded as compact JSON; structs encode as objects."""

    class Email(msgspec.Struct):
        to: str

    assert encode_payload({"a": [1, 2]}) == b'{"a":[1,2]}'
    assert encode_payload(Email(to="x@y")) == b'{"to":"x@y"}'
    assert encode_payload(None) == b"null"


# -- key layout ------------------------------------------------------------------------


def test_all_keys_of_a_queue_share_one_hash_tag() -> None:
    """Every key and channel of a queue starts with the prefix and hashes to ``{queue}``."""
    keys = Keys("myapp").queue("emails")
    names = [slot for slot in QueueKeys.__slots__ if slot not in ("name", "_claim_base")]
    assert len(names) == 14
    for slot in names:
        key = getattr(keys, slot)
        assert key.startswith("myapp:{emails}:"), key
        # Redis Cluster hashes the text between the first "{" and the next "}".
        start = key.index("{")
        assert key[start + 1 : key.index("}", start)] == "emails", key
    assert len({getattr(keys, slot) for slot in names}) == len(names)
    memo = keys.claim_memo("w:1")
    assert memo.startswith("myapp:{emails}:"), memo
    assert keys.name == "emails"


def test_default_prefix_and_global_keys() -> None:
    """The default prefix is "gqm", and global keys and channels carry the prefix."""
    keys = Keys()
    assert keys.prefix == "gqm"
    assert keys.queue("q").ready == "gqm:{q}:ready"
    assert keys.queues == "gqm:queues"
    assert keys.ids == "gqm:ids"
    assert keys.servers == "gqm:servers"
    assert keys.server("s1") == "gqm:server:s1"
    assert keys.done_channel == "gqm:done"


def test_queue_keys_are_cached_and_validated() -> None:
    """``Keys.queue`` returns one cached object per queue and refuses invalid names."""
    keys = Keys("p")
    assert keys.queue("a") is keys.queue("a")
    assert keys.queue("a") is not keys.queue("b")
    with pytest.raises(gqm.ConfigurationError):
        keys.queue("a}b")


@pytest.mark.parametrize("prefix", ["", "{", "}", "a{b", "a}b", "{tag}", "a b", "a\nb"], ids=repr)
def test_invalid_prefix_refused(prefix: str) -> None:
    """Empty prefixes and prefixes with braces, spaces or newlines raise ConfigurationError."""
    with pytest.raises(gqm.ConfigurationError):
        Keys(prefix)
