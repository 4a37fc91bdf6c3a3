"""Cron expressions: a pure parser and a DST-correct ``next_after``.

An expression has six fields, seconds first::

    ┌──────────── second        0-59
    │ ┌────────── minute        0-59
    │ │ ┌──────── hour          0-23
    │ │ │ ┌────── day of month  1-31
    │ │ │ │ ┌──── month         1-12 or JAN-DEC
    │ │ │ │ │ ┌── day of week   0-7 or SUN-SAT (0 and 7 are both Sunday)
    │ │ │ │ │ │
    0 0 2 * * *      every day at 02:00:00

Five fields are accepted too, with seconds = 0 (the Go original accepts them although its
README says six are required). Each field is a comma list of items; an item is ``*``, a
number or name, a range ``a-b``, or one of these with a step: ``*/n``, ``a-b/n``, or
``a/n`` (from ``a`` to the field's maximum). ``?`` means ``*`` in the two day fields. Names
are case-insensitive. The macros ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``,
``@daily`` (``@midnight``) and ``@hourly`` fire at second 0.

**Day of month and day of week.** If both day fields are restricted (neither is a bare
``*`` or ``?``), a day matches when *either* matches: ``0 0 0 13 * FRI`` fires on every
13th and on every Friday. This is the rule of Vixie cron (and of robfig/cron). If only
one day field is restricted, only that one counts. Note that ``*/2`` counts as restricted
(as in robfig/cron; Vixie cron would treat it as ``*``).

**Time zones and daylight saving time.** The fields are matched against the local
wall-clock time in the schedule's IANA time zone, and each match is turned into one UTC
instant:

* a wall-clock time that exists once fires at that instant;
* a wall-clock time that is repeated when the clocks go back (the fall-back overlap)
  fires only at its *first* occurrence (``fold=0``), never twice;
* a wall-clock time that is skipped when the clocks go forward (the spring-forward gap)
  does not vanish: it fires at the first instant after the gap, which is the transition
  instant itself. Several matching times inside one gap, and a match on the first
  wall-clock time after the gap, all fire there together, *once*.

So in America/New_York, ``0 30 2 * * *`` fires at 03:00 EDT on the day 02:30 is skipped,
and ``0 30 1 * * *`` fires once, at the first 01:30 (EDT), on the day 01:30 is repeated.
Vixie cron treats jobs at fixed times much the same way (skipped runs happen right after
the change, repeated ones are not run again). Unlike Vixie cron, gqm applies the rule to
wildcard expressions too: ``0 */15 * * * *`` fires once at 03:00 EDT for the four skipped
quarter-hours and 03:00 itself, and does not run the four of the repeated hour again.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CronError", "CronSchedule"]


class CronError(ConfigurationError):
    """Raised for an invalid cron expression or time zone, or a schedule that never fires.

    The message quotes the expression and names the bad field by position and name, for
    example ``cron "0 61 * * * *": field 2 (minute) value 61 is out of range 0-59``.
    """


@dataclass(frozen=True, slots=True)
class _Field:
    """The static description of one field: its name, bounds and optional names."""

    name: str
    low: int
    #: The maximum a value may be written as (7 for day-of-week, where 7 is Sunday).
    high: int
    #: The maximum that ``*`` and ``a/n`` run up to (6 for day-of-week, so that
    #: ``*/2`` does not reach 7 and wrap to Sunday a second time).
    star_high: int
    names: tuple[str, ...] = ()
    #: The value of ``names[0]``.
    names_base: int = 0


_SECOND = _Field("second", 0, 59, 59)
_MINUTE = _Field("minute", 0, 59, 59)
_HOUR = _Field("hour", 0, 23, 23)
_DOM = _Field("day-of-month", 1, 31, 31)
_MONTH = _Field(
    "month",
    1,
    12,
    12,
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
    1,
)
_DOW = _Field("day-of-week", 0, 7, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), 0)
_FIELDS = (_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW)

_MACROS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}

#: The longest a day of month that exists at all can be absent: Feb 29 of 2096 is followed
#: by Feb 29 of 2104. Parsing rejects day/month combinations that never exist, so a search
#: that runs past this many years means a bug, and is stopped rather than looping.
_SEARCH_YEARS = 10
#: The most days each month can have; February counts its leap day.
_MAX_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND_DELTA = timedelta(seconds=1)
# ASCII only: str.isdigit() would accept "²" or Arabic-Indic digits.
_NUMBER = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A parsed cron expression in a time zone.

    Build one with :meth:`parse` (or the constructor, which takes the same arguments).
    Instances are immutable, hashable and compare by ``expr`` and ``timezone``. See the
    module documentation for the syntax and for the daylight-saving-time rule.
    """

    #: The expression as given, e.g. ``"0 0 2 * * *"`` or ``"@daily"``.
    expr: str
    #: The IANA time zone the expression is matched in, e.g. ``"Asia/Jakarta"``.
    timezone: str = "UTC"

    _tz: tzinfo = field(init=False, repr=False, compare=False)
    _seconds: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _minutes: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _hours: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _doms: frozenset[int] = field(init=False, repr=False, compare=False)
    _months: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _dows: frozenset[int] = field(init=False, repr=False, compare=False)
    _dom_star: bool = field(init=False, repr=False, compare=False)
    _dow_star: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.expr, str):
            raise CronError(f"a cron expression must be a string, got {self.expr!r}")
        if not isinstance(self.timezone, str):
            raise CronError(f"a cron timezone must be a string, got {self.timezone!r}")
        texts, offset = _split(self.expr)
        seconds, minutes, hours, doms, months, dows = (
            _parse_field(self.expr, position, spec, text)
            for position, (spec, text) in enumerate(zip(_FIELDS, texts, strict=True), offset)
        )
        # 7 is an alias of Sunday; keep one spelling so matching needs one lookup.
        dows = frozenset(d % 7 for d in dows)
        dom_star = texts[3] in ("*", "?")
        dow_star = texts[5] in ("*", "?")
        if dow_star and min(doms) > max(_MAX_DAYS[m - 1] for m in months):
            # The only way a parsed schedule can never fire: every chosen day of month is
            # past the end of every chosen month (Feb 30, Apr 31...). With a restricted
            # day of week the OR rule always leaves some days, so nothing else is needed.
            names = ",".join(_MONTH.names[m - 1] for m in sorted(months))
            raise CronError(
                f'cron "{self.expr}": field {3 + offset} (day-of-month) never fires: '
                f"no day {','.join(map(str, sorted(doms)))} in month {names}"
            )
        put = object.__setattr__  # the dataclass is frozen
        put(self, "_tz", _zone(self.expr, self.timezone))
        put(self, "_seconds", tuple(sorted(seconds)))
        put(self, "_minutes", tuple(sorted(minutes)))
        put(self, "_hours", tuple(sorted(hours)))
        put(self, "_doms", doms)
        put(self, "_months", tuple(sorted(months)))
        put(self, "_dows", dows)
        put(self, "_dom_star", dom_star)
        put(self, "_dow_star", dow_star)

    @classmethod
    def parse(cls, expr: str, timezone: str = "UTC") -> CronSchedule:
        """Parse ``expr`` (5 or 6 fields, or a macro) to be matched in ``timezone``.

        Raises :class:`CronError` naming the bad field, for an unknown time zone, or for
        an expression that can never fire (such as Feb 30).
        """
        return cls(expr, timezone)

    @property
    def tzinfo(self) -> tzinfo:
        """The time zone object for :attr:`timezone`."""
        return self._tz

    def __str__(self) -> str:
        return f"{self.expr} ({self.timezone})"

    def matches(self, local: datetime) -> bool:
        """Whether the wall-clock time ``local`` matches every field.

        ``local`` is a naive local time in :attr:`timezone`; an aware datetime is first
        converted to that zone. Microseconds are ignored. This checks the fields only: it
        does not apply the DST rule, for which use :meth:`next_after`.
        """
        if local.tzinfo is not None:
            local = local.astimezone(self._tz)
        return (
            local.second in self._seconds
            and local.minute in self._minutes
            and local.hour in self._hours
            and local.month in self._months
            and self._day_matches(local.year, local.month, local.day)
        )

    def next_after(self, after: datetime) -> datetime:
        """The first fire instant strictly after ``after``, in UTC with whole seconds.

        ``after`` must be timezone-aware (any zone). Raises :class:`CronError` if ``after``
        is naive or no fire time exists before the end of the ``datetime`` range.
        """
        if after.tzinfo is None or after.utcoffset() is None:
            raise CronError(f"next_after needs a timezone-aware datetime, got {after!r}")
        try:
            return _EPOCH + timedelta(seconds=self._next_instant(after))
        except OverflowError:
            raise CronError(
                f'cron "{self.expr}": no fire time after {after.isoformat()} '
                "within the range of datetime"
            ) from None

    # -- the search ---------------------------------------------------------------------
    #
    # Instants are whole POSIX seconds (ints); wall-clock times are naive datetimes. The
    # search walks wall-clock time field by field, and maps each matching wall time W to
    # its fire instant with _instant(). That map never goes backwards (a later wall time
    # never fires earlier), so the first matching W whose instant is after `after` gives
    # the answer.

    def _next_instant(self, after: datetime) -> int:
        after_ts = (after - _EPOCH) // _SECOND_DELTA  # floor: fires are whole seconds
        local = self._local(after_ts)
        start = local.replace(tzinfo=None, fold=0) + _SECOND_DELTA
        if local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset():
            # `after` is a second occurrence of a repeated wall time. The rest of the
            # overlap only repeats wall times whose first occurrence is already past, so
            # start at the first instant after the overlap instead of visiting each one.
            repeated = _seconds(local.replace(fold=0).utcoffset()) - _seconds(local.utcoffset())
            end = after_ts + repeated
            first = _first_true(after_ts, end, lambda t: self._local(t).fold == 0)
            start = self._wall(first)
        while True:
            wall = self._next_match(start)
            instant = self._instant(wall)
            if instant > after_ts:
                return instant
            # Only reached for wall times repeated by an overlap (handled above), but a
            # loop that always advances is safer than trusting that.
            start = wall + _SECOND_DELTA

    def _next_match(self, start: datetime) -> datetime:
        """The first wall-clock time at or after ``start`` that matches every field."""
        year, month, day = start.year, start.month, start.day
        hour, minute, second = start.hour, start.minute, start.second
        limit = start.year + _SEARCH_YEARS
        while year <= limit:
            if year > datetime.max.year:
                raise OverflowError
            # Each step either returns or moves to the next candidate of the largest field
            # that fails, resetting the smaller ones, so no candidate is visited twice.
            if month not in self._months:
                i = bisect_left(self._months, month)
                if i == len(self._months):
                    year, month = year + 1, self._months[0]
                else:
                    month = self._months[i]
                day, hour, minute, second = 1, 0, 0, 0
                continue
            days_in_month = calendar.monthrange(year, month)[1]
            first_day = day
            while day <= days_in_month and not self._day_matches(year, month, day):
                day += 1
            if day > days_in_month:
                year, month = (year + 1, 1) if month == 12 else (year, month + 1)
                day, hour, minute, second = 1, 0, 0, 0
                continue
            if day != first_day:
                hour, minute, second = 0, 0, 0
            next_hour = _next_in(self._hours, hour)
            if next_hour is None:
                day, hour, minute, second = day + 1, 0, 0, 0
                continue
            if next_hour != hour:
                hour, minute, second = next_hour, 0, 0
            next_minute = _next_in(self._minutes, minute)
            if next_minute is None:
                hour, minute, second = hour + 1, 0, 0
                continue
            if next_minute != minute:
                minute, second = next_minute, 0
            next_second = _next_in(self._seconds, second)
            if next_second is None:
                minute, second = minute + 1, 0
                continue
            return datetime(year, month, day, hour, minute, next_second)
        # Unreachable for schedules that parse (see _SEARCH_YEARS).
        raise CronError(f'cron "{self.expr}": never fires (searched {_SEARCH_YEARS} years)')

    def _day_matches(self, year: int, month: int, day: int) -> bool:
        if self._dom_star and self._dow_star:
            return True
        dom_ok = day in self._doms
        if self._dow_star:
            return dom_ok
        # isoweekday: Monday 1 .. Sunday 7; cron: Sunday 0 .. Saturday 6.
        dow_ok = date(year, month, day).isoweekday() % 7 in self._dows
        if self._dom_star:
            return dow_ok
        return dom_ok or dow_ok  # both restricted: the Vixie cron OR rule

    def _instant(self, wall: datetime) -> int:
        """The fire instant of the matching wall-clock time ``wall`` (the DST rule)."""
        # fold=0 picks the first occurrence of a repeated wall time.
        first = (wall.replace(tzinfo=self._tz) - _EPOCH) // _SECOND_DELTA
        if self._wall(first) == wall:
            return first
        # `wall` is in a gap. Its fold=0 and fold=1 readings (the offsets before and after
        # the transition) land on either side of the transition; the fire instant is the
        # first instant whose wall-clock time is past `wall`, the end of the gap.
        other = (wall.replace(tzinfo=self._tz, fold=1) - _EPOCH) // _SECOND_DELTA
        low, high = min(first, other), max(first, other)
        return _first_true(low, high, lambda t: self._wall(t) > wall)

    def _local(self, instant: int) -> datetime:
        return (_EPOCH + timedelta(seconds=instant)).astimezone(self._tz)

    def _wall(self, instant: int) -> datetime:
        return self._local(instant).replace(tzinfo=None, fold=0)


def _split(expr: str) -> tuple[list[str], int]:
    """The six field texts, and the position (1-based) the user wrote the first one at.

    For a 5-field expression the seconds field is filled in and numbered 0, so error
    messages count fields as the user wrote them.
    """
    text = expr.strip()
    if not text:
        raise CronError(f'cron "{expr}": the expression is empty')
    if text.startswith("@"):
        macro = _MACROS.get(text.lower())
        if macro is None:
            known = ", ".join(_MACROS)
            raise CronError(f'cron "{expr}": unknown macro {text} (known: {known})')
        return macro.split(), 1
    texts = text.split()
    if len(texts) == 5:
        return ["0", *texts], 0
    if len(texts) != 6:
        raise CronError(
            f'cron "{expr}": expected 6 fields (second minute hour day-of-month month '
            f"day-of-week) or 5 (without seconds), got {len(texts)}"
        )
    return texts, 1


def _parse_field(expr: str, position: int, spec: _Field, text: str) -> frozenset[int]:
    where = f'cron "{expr}": field {position} ({spec.name})'
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(f'{where} has an empty item in "{text}"')
        values.update(_parse_item(where, spec, item))
    return frozenset(values)


def _parse_item(where: str, spec: _Field, item: str) -> range:
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if "/" in step_text:
            raise CronError(f'{where} item "{item}" has more than one "/"')
        if not _NUMBER.fullmatch(step_text):
            raise CronError(f'{where} step "{step_text}" in "{item}" is not a number')
        step = int(step_text)
        if step == 0:
            raise CronError(f'{where} step 0 in "{item}" must be at least 1')
    if base in ("*", "?"):
        if base == "?" and spec is not _DOM and spec is not _DOW:
            raise CronError(f"{where} may not be ?, which is only for the two day fields")
        if base == "?" and slash:
            raise CronError(f'{where} "{item}": ? cannot take a step')
        return range(spec.low, spec.star_high + 1, step)
    start_text, dash, end_text = base.partition("-")
    start = _parse_value(where, spec, start_text, item)
    if dash:
        if "-" in end_text:
            raise CronError(f'{where} range "{base}" has more than one "-"')
        end = _parse_value(where, spec, end_text, item)
        if start > end:
            hint = " (write Sunday as 7 at the end of a range)" if spec is _DOW else ""
            raise CronError(f'{where} range "{base}" is reversed: {start} > {end}{hint}')
    else:
        # "a/n" runs from a to the maximum; a bare "a" is just a.
        end = max(start, spec.star_high) if slash else start
    return range(start, end + 1, step)


def _parse_value(where: str, spec: _Field, text: str, item: str) -> int:
    if _NUMBER.fullmatch(text):
        value = int(text)
        if not spec.low <= value <= spec.high:
            raise CronError(f"{where} value {value} is out of range {spec.low}-{spec.high}")
        return value
    upper = text.upper()
    if spec.names and upper in spec.names:
        return spec.names.index(upper) + spec.names_base
    if not text:
        raise CronError(f'{where} has a missing value in "{item}"')
    expected = f"a number or a name {spec.names[0]}-{spec.names[-1]}" if spec.names else "a number"
    raise CronError(f'{where} value "{text}" is not {expected}')


def _zone(expr: str, name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # "UTC" is the default, so it must work even where no tz database is installed.
        if name == "UTC":
            return UTC
        raise CronError(f'cron "{expr}": unknown timezone "{name}"') from None


def _next_in(values: tuple[int, ...], value: int) -> int | None:
    """The smallest of the sorted ``values`` that is >= ``value``, or None."""
    i = bisect_left(values, value)
    return values[i] if i < len(values) else None


def _first_true(low: int, high: int, predicate: Callable[[int], bool]) -> int:
    """The smallest ``t`` in ``(low, high]`` with ``predicate(t)``.

    The predicate must be monotonic there (false, then true) and true at ``high``.
    """
    while high - low > 1:
        middle = (low + high) // 2
        if predicate(middle):
            high = middle
        else:
            low = middle
    return high


def _seconds(delta: timedelta | None) -> int:
    return 0 if delta is None else delta // _SECOND_DELTA
