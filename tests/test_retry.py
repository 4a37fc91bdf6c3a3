"""RetryPolicy and interval_delay: how long a failed job waits before each retry."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import gqm
from gqm.retry import DEFAULT_BACKOFF_MAX, DEFAULT_MAX_RETRY, DEFAULT_RETRY_DELAY, interval_delay


def test_defaults() -> None:
    """The default policy retries 3 times with a fixed 10 s delay."""
    policy = gqm.RetryPolicy()
    assert policy.max_retry == DEFAULT_MAX_RETRY == 3
    assert policy.backoff is gqm.Backoff.FIXED
    assert [policy.delay(n) for n in (1, 2, 5)] == [DEFAULT_RETRY_DELAY] * 3 == [10.0] * 3


def test_backoff_string_is_coerced_to_enum() -> None:
    """A backoff given as a string is stored as the ``Backoff`` member."""
    assert gqm.RetryPolicy(backoff="exponential").backoff is gqm.Backoff.EXPONENTIAL
    assert gqm.RetryPolicy(backoff="custom", intervals=[1]).backoff is gqm.Backoff.CUSTOM


def test_policy_is_frozen() -> None:
    """A RetryPolicy cannot be changed after construction."""
    policy = gqm.RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_retry = 5  # type: ignore[misc]


def test_fixed_delay_is_constant() -> None:
    """A fixed backoff waits ``backoff_base`` before every retry."""
    policy = gqm.RetryPolicy(backoff=gqm.Backoff.FIXED, backoff_base=2.5, backoff_max=1.0)
    assert [policy.delay(n) for n in range(1, 8)] == [2.5] * 7


def test_exponential_delay_doubles_then_caps() -> None:
    """An exponential backoff doubles from ``backoff_base`` and stops at ``backoff_max``."""
    policy = gqm.RetryPolicy(backoff="exponential", backoff_base=1.0, backoff_max=100.0)
    delays = [policy.delay(n) for n in range(1, 10)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0, 100.0]


def test_exponential_default_cap_is_one_day() -> None:
    """Without ``backoff_max``, exponential delays are capped at 24 hours."""
    policy = gqm.RetryPolicy(backoff="exponential", backoff_base=10.0)
    assert DEFAULT_BACKOFF_MAX == 86400.0
    assert policy.delay(14) == 10.0 * 2**13
    assert policy.delay(15) == 86400.0


@pytest.mark.parametrize("retry", [63, 64, 1_000, 10**6, 10**18, 10**100])
def test_exponential_huge_retry_number_does_not_overflow(retry: int) -> None:
    """A huge retry number gives ``backoff_max``, without OverflowError."""
    policy = gqm.RetryPolicy(backoff="exponential", backoff_base=3.0, backoff_max=600.0)
    assert policy.delay(retry) == 600.0


def test_exponential_unbounded_max_stays_finite() -> None:
    """With an infinite ``backoff_max``, huge retry numbers still give a finite float."""
    policy = gqm.RetryPolicy(backoff="exponential", backoff_base=1.0, backoff_max=math.inf)
    delay = policy.delay(10**9)
    assert isinstance(delay, float)
    assert math.isfinite(delay)
    assert delay == policy.delay(10**9 + 1)


@pytest.mark.parametrize("backoff", ["fixed", "exponential"])
def test_retry_numbers_below_one_count_as_first(backoff: str) -> None:
    """Retry numbers 0 and below get the delay of the first retry."""
    policy = gqm.RetryPolicy(backoff=backoff, backoff_base=4.0)
    assert policy.delay(0) == policy.delay(-3) == policy.delay(1) == 4.0


def test_custom_intervals_then_last_repeats() -> None:
    """A custom backoff uses ``intervals[n-1]``, and repeats the last one after that."""
    policy = gqm.RetryPolicy(backoff="custom", intervals=[1, 5, 30])
    assert [policy.delay(n) for n in range(1, 7)] == [1.0, 5.0, 30.0, 30.0, 30.0, 30.0]
    assert policy.delay(10**9) == 30.0
    assert policy.delay(0) == 1.0


def test_custom_intervals_are_copied_to_a_float_tuple() -> None:
    """The intervals are stored as a tuple of floats, unaffected by later list changes."""
    source = [1, 2]
    policy = gqm.RetryPolicy(backoff="custom", intervals=source)
    source.append(99)
    assert policy.intervals == (1.0, 2.0)
    assert all(type(i) is float for i in policy.intervals)
    assert policy.delay(3) == 2.0


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_retry": -1}, id="negative-max-retry"),
        pytest.param({"backoff": "linear"}, id="unknown-backoff"),
        pytest.param({"backoff": "FIXED"}, id="backoff-is-case-sensitive"),
        pytest.param({"backoff": "custom"}, id="custom-without-intervals"),
        pytest.param({"backoff": "custom", "intervals": []}, id="custom-empty-intervals"),
        pytest.param({"backoff": "custom", "intervals": [1, -1]}, id="negative-interval"),
        pytest.param({"intervals": [-0.5]}, id="negative-interval-fixed"),
        pytest.param({"backoff_base": -1.0}, id="negative-base"),
        pytest.param({"backoff_max": -1.0}, id="negative-max"),
    ],
)
def test_invalid_policy_raises_configuration_error(kwargs: dict[str, object]) -> None:
    """Invalid settings raise ConfigurationError (a GqmError and a ValueError)."""
    with pytest.raises(gqm.ConfigurationError) as info:
        gqm.RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, gqm.GqmError)
    assert isinstance(info.value, ValueError)


def test_unknown_backoff_message_names_the_choices() -> None:
    """The error for an unknown backoff names the value and the valid choices."""
    with pytest.raises(gqm.ConfigurationError, match=r"'linear'.*fixed, exponential or custom"):
        gqm.RetryPolicy(backoff="linear")


def test_zero_retries_and_zero_delays_are_valid() -> None:
    """``max_retry=0`` and zero delays are accepted."""
    policy = gqm.RetryPolicy(max_retry=0, backoff="custom", intervals=[0])
    assert policy.max_retry == 0
    assert policy.delay(1) == 0.0


@pytest.mark.parametrize(
    ("retry", "expected"),
    [(1, 1.0), (2, 2.0), (3, 3.0), (4, 3.0), (1000, 3.0), (0, 1.0), (-5, 1.0)],
)
def test_interval_delay(retry: int, expected: float) -> None:
    """``interval_delay`` indexes a job's intervals 1-based, repeating the last one."""
    delay = interval_delay([1, 2, 3], retry)
    assert delay == expected
    assert type(delay) is float


@given(
    base=st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
    cap=st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
    n=st.integers(min_value=-5, max_value=10**30),
    step=st.integers(min_value=0, max_value=10**30),
)
def test_exponential_delay_is_monotonic_and_capped(
    base: float, cap: float, n: int, step: int
) -> None:
    """Exponential delays never decrease as the retry number grows and never exceed the cap."""
    policy = gqm.RetryPolicy(backoff="exponential", backoff_base=base, backoff_max=cap)
    first, later = policy.delay(n), policy.delay(n + step)
    assert 0.0 <= first <= later <= cap
    assert policy.delay(n + 1) >= first
