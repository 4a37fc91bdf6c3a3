"""Retry policies: how many times a failed job is retried, and how long it waits."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigurationError

#: Used when neither the job, the handler nor the pool sets a limit (as the original).
DEFAULT_MAX_RETRY = 3
#: Delay before a retry when nothing else is configured, in seconds.
DEFAULT_RETRY_DELAY = 10.0
#: The exponential backoff never waits longer than this unless configured, in seconds.
DEFAULT_BACKOFF_MAX = 24 * 3600.0


class Backoff(enum.StrEnum):
    """How the delay grows between retries."""

    FIXED = "fixed"
    EXPONENTIAL = "exponential"
    CUSTOM = "custom"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how often to retry failed jobs.

    * ``fixed``: every retry waits ``backoff_base`` seconds;
    * ``exponential``: retry *n* waits ``backoff_base * 2**(n-1)``, capped at ``backoff_max``;
    * ``custom``: retry *n* waits ``intervals[n-1]`` (the last interval repeats).
    """

    max_retry: int = DEFAULT_MAX_RETRY
    backoff: Backoff | str = Backoff.FIXED
    backoff_base: float = DEFAULT_RETRY_DELAY
    backoff_max: float = DEFAULT_BACKOFF_MAX
    intervals: Sequence[float] = ()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "backoff", Backoff(self.backoff))
        except ValueError:
            raise ConfigurationError(
                f"unknown backoff {self.backoff!r}: use fixed, exponential or custom"
            ) from None
        if (
            isinstance(self.max_retry, bool)
            or not isinstance(self.max_retry, int)
            or self.max_retry < 0
        ):
            raise ConfigurationError(f"max_retry must be an int >= 0, got {self.max_retry!r}")
        if not _finite(self.backoff_base):
            raise ConfigurationError(
                f"backoff_base must be a finite number >= 0, got {self.backoff_base!r}"
            )
        # An infinite cap is allowed: it means no cap.
        if not (_finite(self.backoff_max) or self.backoff_max == math.inf):
            raise ConfigurationError(f"backoff_max must be a number >= 0, got {self.backoff_max!r}")
        if self.backoff is Backoff.CUSTOM and not self.intervals:
            raise ConfigurationError("a custom backoff needs intervals")
        if not all(_finite(i) for i in self.intervals):
            raise ConfigurationError("retry intervals must be finite numbers >= 0")
        object.__setattr__(self, "intervals", tuple(float(i) for i in self.intervals))

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        n = max(retry, 1)
        if self.backoff is Backoff.CUSTOM:
            return float(self.intervals[min(n, len(self.intervals)) - 1])
        if self.backoff is Backoff.EXPONENTIAL:
            return float(min(self.backoff_base * 2 ** min(n - 1, 62), self.backoff_max))
        return float(self.backoff_base)


def _finite(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def interval_delay(intervals: Sequence[float], retry: int) -> float:
    """Delay for retry ``retry`` (1-based) from a job's own ``retry_intervals``."""
    return float(intervals[min(max(retry, 1), len(intervals)) - 1])
