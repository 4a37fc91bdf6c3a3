"""Property tests: ``gqm.cron`` against a brute-force reference.

The reference shares no code with ``gqm.cron``. Expressions are generated together with the
sets of values they mean, so the parser is checked against sets built here. Fire times are
checked by stepping one UTC second at a time and applying the DST rule directly:
an instant ``u`` fires if

* the local wall-clock time at ``u`` matches and is not the second occurrence of a repeated
  wall-clock time (``fold == 1``), or
* the UTC offset went up at ``u`` (``u`` is the first instant after a gap) and some
  wall-clock time skipped by the gap matches.

The brute force only looks a few hours ahead, so the hour field is drawn from the hours the
window covers, and the ``after`` instants cluster around the zone's DST transitions.
"""

from __future__ import annotations

import functools
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gqm.cron import CronError, CronSchedule

SECOND = timedelta(seconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: How far ahead the brute force looks, in seconds.
WINDOW = 4 * 3600
#: The span the ``after`` instants are drawn from.
YEARS_START = datetime(2024, 1, 1, tzinfo=UTC)
YEARS_END = datetime(2028, 1, 1, tzinfo=UTC)

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: DST zones with 1-hour, 30-minute (Lord Howe), 2-hour (Troll), negative (Dublin's
#: tzdata rule) and :45 (Chatham) shifts, a few former DST zones, and UTC.
ZONE_NAMES = (
    "UTC",
    "Europe/London",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Sao_Paulo",
    "Asia/Tehran",
    "Pacific/Chatham",
    "Antarctica/Troll",
    "Europe/Dublin",
    "America/St_Johns",
    "Asia/Kolkata",
)
AVAILABLE = zoneinfo.available_timezones()
# Without a tz database only UTC is left; gqm.cron and these tests then use datetime.UTC.
ZONES = tuple(name for name in ZONE_NAMES if name == "UTC" or name in AVAILABLE)


@functools.cache
def zone(name: str) -> tzinfo:
    return zoneinfo.ZoneInfo(name) if name in AVAILABLE else UTC


def ts(moment: datetime) -> int:
    return (moment - EPOCH) // SECOND


def local(u: int, tz: tzinfo) -> datetime:
    return (EPOCH + timedelta(seconds=u)).astimezone(tz)


@functools.cache
def transitions(name: str) -> tuple[int, ...]:
    """Every instant in 2024-2027 at which the zone's UTC offset changes (found by scanning)."""
    tz = zone(name)
    day = 86400
    found = []
    previous = local(ts(YEARS_START), tz).utcoffset()
    for t in range(ts(YEARS_START) + day, ts(YEARS_END) + 1, day):
        current = local(t, tz).utcoffset()
        if current != previous:
            low, high = t - day, t  # the change is in (low, high]
            while high - low > 1:
                middle = (low + high) // 2
                if local(middle, tz).utcoffset() != previous:
                    high = middle
                else:
                    low = middle
            found.append(high)
        previous = current
    return tuple(found)


def offset(u: int, tz: tzinfo) -> timedelta:
    delta = local(u, tz).utcoffset()
    assert delta is not None
    return delta


def gaps() -> list[tuple[str, int]]:
    """(zone, transition) for every spring-forward transition in 2024-2027."""
    return [
        (name, t)
        for name in ZONES
        for t in transitions(name)
        if offset(t, zone(name)) > offset(t - 1, zone(name))
    ]


GAPS = gaps()


# -- expressions with their meaning -------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    name: str
    low: int
    high: int  # the highest value that may be written
    star_high: int  # the highest value * covers
    names: tuple[str, ...] = ()
    names_base: int = 0


SECOND_SPEC = Spec("second", 0, 59, 59)
MINUTE_SPEC = Spec("minute", 0, 59, 59)
HOUR_SPEC = Spec("hour", 0, 23, 23)
DOM_SPEC = Spec("day-of-month", 1, 31, 31)
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
MONTH_SPEC = Spec("month", 1, 12, 12, MONTHS, 1)
DOW_SPEC = Spec("day-of-week", 0, 7, 6, DAYS, 0)  # 7 is written as a number only


@dataclass(frozen=True)
class Field:
    text: str
    values: frozenset[int]

    @property
    def star(self) -> bool:
        return self.text in ("*", "?")


@dataclass(frozen=True)
class Expr:
    """A generated expression and the sets of values it stands for."""

    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    doms: frozenset[int]
    months: frozenset[int]
    dows: frozenset[int]  # 0-6, Sunday 0
    dom_star: bool
    dow_star: bool

    def matches(self, wall: datetime) -> bool:
        if not (
            wall.second in self.seconds
            and wall.minute in self.minutes
            and wall.hour in self.hours
            and wall.month in self.months
        ):
            return False
        dom_ok = wall.day in self.doms
        dow_ok = (wall.weekday() + 1) % 7 in self.dows  # weekday(): Monday 0
        if self.dom_star or self.dow_star:
            return dom_ok and dow_ok  # the star side is all days
        return dom_ok or dow_ok

    def can_fire(self) -> bool:
        if not self.dow_star:
            return True
        # 2000 is a leap year, so this also finds Feb 29.
        return any(_valid_date(2000, month, day) for month in self.months for day in self.doms)


def _valid_date(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


@st.composite
def render(draw: st.DrawFn, spec: Spec, value: int) -> str:
    if spec.names and spec.low <= value - spec.names_base < len(spec.names) and draw(st.booleans()):
        name = spec.names[value - spec.names_base]
        return draw(st.sampled_from([name, name.lower(), name.capitalize()]))
    return str(value)


@st.composite
def item(draw: st.DrawFn, spec: Spec, values: st.SearchStrategy[int]) -> tuple[str, set[int]]:
    kind = draw(st.sampled_from(["value", "range", "range_step", "star_step", "start_step"]))
    step = draw(st.integers(1, spec.star_high - spec.low + 3))
    if kind == "value":
        v = draw(values)
        return draw(render(spec, v)), {v}
    if kind in ("range", "range_step"):
        a, b = sorted((draw(values), draw(values)))
        text = f"{draw(render(spec, a))}-{draw(render(spec, b))}"
        if kind == "range":
            return text, set(range(a, b + 1))
        return f"{text}/{step}", set(range(a, b + 1, step))
    if kind == "star_step":
        return f"*/{step}", set(range(spec.low, spec.star_high + 1, step))
    a = draw(values.filter(lambda v: v <= spec.star_high))
    return f"{draw(render(spec, a))}/{step}", set(range(a, spec.star_high + 1, step))


@st.composite
def field(
    draw: st.DrawFn,
    spec: Spec,
    *,
    star_percent: int,
    values: st.SearchStrategy[int] | None = None,
) -> Field:
    if draw(st.integers(0, 99)) < star_percent:
        day_field = spec in (DOM_SPEC, DOW_SPEC)
        text = draw(st.sampled_from(["*", "?"])) if day_field else "*"
        return Field(text, frozenset(range(spec.low, spec.star_high + 1)))
    values = values if values is not None else st.integers(spec.low, spec.high)
    items = draw(st.lists(item(spec, values), min_size=1, max_size=3))
    union = set().union(*(s for _, s in items))
    if spec is DOW_SPEC:
        union = {v % 7 for v in union}  # 7 is Sunday too
    return Field(",".join(t for t, _ in items), frozenset(union))


@st.composite
def expressions(
    draw: st.DrawFn,
    *,
    seconds: st.SearchStrategy[int] | None = None,
    minutes: st.SearchStrategy[int] | None = None,
    hours: st.SearchStrategy[int] | None = None,
    day_star_percent: int = 80,
) -> Expr:
    """A random expression; ``seconds``, ``minutes`` and ``hours`` narrow the values the
    fields are built from."""
    five = draw(st.integers(0, 9)) == 0
    second = (
        Field("0", frozenset({0}))
        if five
        else draw(field(SECOND_SPEC, star_percent=30, values=seconds))
    )
    minute = draw(field(MINUTE_SPEC, star_percent=30, values=minutes))
    hour = draw(field(HOUR_SPEC, star_percent=25, values=hours))
    dom = draw(field(DOM_SPEC, star_percent=day_star_percent))
    month = draw(field(MONTH_SPEC, star_percent=day_star_percent))
    dow = draw(field(DOW_SPEC, star_percent=day_star_percent))
    texts = [f.text for f in (minute, hour, dom, month, dow)]
    if not five:
        texts.insert(0, second.text)
    separator = draw(st.sampled_from([" ", "  ", "\t"]))
    return Expr(
        separator.join(texts),
        second.values,
        minute.values,
        hour.values,
        dom.values,
        month.values,
        dow.values,
        dom.star,
        dow.star,
    )


@st.composite
def instants(draw: st.DrawFn, name: str) -> int:
    """A UTC second in 2024-2027, usually within a few hours of a DST transition."""
    points = transitions(name)
    if not points or draw(st.integers(0, 9)) < 2:
        return draw(st.integers(ts(YEARS_START), ts(YEARS_END)))
    point = draw(st.sampled_from(points))
    if draw(st.booleans()):
        # Just before: the next fire is often the transition itself.
        return point - draw(st.integers(0, 900))
    return point + draw(st.integers(-WINDOW - 3600, 2 * 3600))


@st.composite
def as_datetime(draw: st.DrawFn, u: int, tz: tzinfo) -> datetime:
    """The instant ``u`` (plus a fraction of a second) as an aware datetime in some zone."""
    micro = draw(st.sampled_from([0, 0, 1, 500_000, 999_999]))
    moment = EPOCH + timedelta(seconds=u, microseconds=micro)
    shown_in = draw(st.sampled_from([UTC, tz, timezone(timedelta(hours=-7, minutes=-30))]))
    return moment.astimezone(shown_in)


# -- the reference ------------------------------------------------------------------------


def fires_at(expr: Expr, tz: tzinfo, u: int) -> bool:
    """Whether the instant ``u`` is a fire time (the DST rule, applied directly)."""
    now, before = local(u, tz), local(u - 1, tz)
    return _fires(expr, now, before)


def _fires(expr: Expr, now: datetime, before: datetime) -> bool:
    now_offset, before_offset = now.utcoffset(), before.utcoffset()
    assert now_offset is not None
    assert before_offset is not None
    if now_offset > before_offset:
        # u is the first instant after a gap: every skipped wall time fires here.
        wall = before.replace(tzinfo=None) + SECOND
        end = now.replace(tzinfo=None)
        while wall < end:
            if expr.matches(wall):
                return True
            wall += SECOND
    return now.fold == 0 and expr.matches(now.replace(tzinfo=None))


def brute_force(expr: Expr, tz: tzinfo, after: int, window: int = WINDOW) -> int | None:
    """The first fire instant in ``(after, after + window]``, stepping second by second."""
    before = local(after, tz)
    for u in range(after + 1, after + window + 1):
        now = local(u, tz)
        # Most seconds fail on the seconds field; skip them without the full check unless
        # the offset changed (the gap branch can fire on any second).
        if (now.second in expr.seconds or now.utcoffset() != before.utcoffset()) and _fires(
            expr, now, before
        ):
            return u
        before = now
    return None


def near_hours(tz: tzinfo, after: int) -> list[int]:
    """The local hours the brute-force window after ``after`` passes through, counting the
    hours a gap skips (which no instant shows)."""
    wall = local(after, tz).replace(tzinfo=None, minute=0, second=0)
    end = local(after + WINDOW, tz).replace(tzinfo=None)
    hours = set()
    while wall <= end:
        hours.add(wall.hour)
        wall += timedelta(hours=1)
    return sorted(hours)


# -- properties ---------------------------------------------------------------------------


def daily(second: int, minute: int, hour: int) -> Expr:
    """A reference ``Expr`` firing every day at one wall-clock time."""
    return Expr(
        text=f"{second} {minute} {hour} * * *",
        seconds=frozenset({second}),
        minutes=frozenset({minute}),
        hours=frozenset({hour}),
        doms=frozenset(range(1, 32)),
        months=frozenset(range(1, 13)),
        dows=frozenset(range(7)),
        dom_star=True,
        dow_star=True,
    )


@pytest.mark.skipif("America/New_York" not in AVAILABLE, reason="no tz database")
def test_reference_applies_the_dst_rule() -> None:
    """The brute force itself gets the New York cases of tests/test_cron.py right."""
    tz = zone("America/New_York")
    # 02:30 is skipped on 2026-03-08: it fires at 03:00 EDT (07:00 UTC).
    spring = ts(datetime(2026, 3, 8, 7, tzinfo=UTC))
    assert brute_force(daily(0, 30, 2), tz, spring - 3600) == spring
    assert brute_force(daily(0, 30, 2), tz, spring) is None
    # 01:30 is repeated on 2026-11-01: only the first one (EDT, 05:30 UTC) fires.
    fall = ts(datetime(2026, 11, 1, 5, 30, tzinfo=UTC))
    assert brute_force(daily(0, 30, 1), tz, fall - 3600) == fall
    assert brute_force(daily(0, 30, 1), tz, fall) is None


@SETTINGS
@given(data=st.data())
def test_next_after_agrees_with_brute_force(data: st.DataObject) -> None:
    """next_after returns exactly the first fire instant the brute force finds."""
    name = data.draw(st.sampled_from(ZONES), label="zone")
    tz = zone(name)
    after = data.draw(instants(name), label="after")
    expr = data.draw(expressions(hours=st.sampled_from(near_hours(tz, after))), label="expr")
    if not expr.can_fire():
        return  # test_parse_agrees_with_reference covers these
    schedule = CronSchedule.parse(expr.text, name)
    after_dt = data.draw(as_datetime(after, tz), label="after_dt")

    expected = brute_force(expr, tz, after)
    actual = schedule.next_after(after_dt)

    if local(after, tz).fold:
        event("after is in a repeated hour")
    assert actual.tzinfo is UTC
    assert actual.microsecond == 0
    if expected is None:
        event("no fire within the window")
        assert ts(actual) > after + WINDOW
    else:
        event("fires within the window")
        if offset(expected, tz) != offset(expected - 1, tz):
            event("fires at a transition")
        assert ts(actual) == expected, (
            f"{expr.text!r} in {name} after {after_dt.isoformat()}: "
            f"got {actual.isoformat()}, expected {EPOCH + timedelta(seconds=expected)}"
        )


@SETTINGS
@given(
    data=st.data(),
    wall=st.datetimes(datetime(2000, 1, 1), datetime(2100, 12, 31)),
)
def test_parse_agrees_with_reference(data: st.DataObject, wall: datetime) -> None:
    """The parser means what the generator meant: same matches, and Feb 30 is refused."""
    expr = data.draw(expressions(day_star_percent=40), label="expr")
    if not expr.can_fire():
        with pytest.raises(CronError, match="never fires"):
            CronSchedule.parse(expr.text)
        return
    schedule = CronSchedule.parse(expr.text)
    assert schedule.expr == expr.text
    assert schedule.matches(wall) == expr.matches(wall)


@SETTINGS
@given(data=st.data())
def test_next_after_is_a_fire_time_and_stable(data: st.DataObject) -> None:
    """For any expression (sparse ones too): the result is later than ``after`` and is a
    fire time; any instant between the two, and the second before the fire time, give the
    same result; the fire after it is later and is a fire time too."""
    name = data.draw(st.sampled_from(ZONES), label="zone")
    tz = zone(name)
    expr = data.draw(expressions(day_star_percent=50), label="expr")
    if not expr.can_fire():
        return
    schedule = CronSchedule.parse(expr.text, name)
    after = data.draw(instants(name), label="after")
    after_dt = data.draw(as_datetime(after, tz), label="after_dt")

    first = schedule.next_after(after_dt)
    assert first > after_dt
    assert fires_at(expr, tz, ts(first))
    # Any instant from `after` up to the fire time has the same next fire time...
    between = data.draw(st.integers(after, ts(first) - 1), label="between")
    assert schedule.next_after(EPOCH + timedelta(seconds=between)) == first
    assert schedule.next_after(first - SECOND) == first
    # ...and the one after is strictly later, and a fire time too.
    second = schedule.next_after(first)
    assert second > first
    assert fires_at(expr, tz, ts(second))


@SETTINGS
@given(data=st.data())
def test_next_after_is_monotonic(data: st.DataObject) -> None:
    """A later ``after`` never gives an earlier fire time."""
    name = data.draw(st.sampled_from(ZONES), label="zone")
    expr = data.draw(expressions(day_star_percent=60), label="expr")
    if not expr.can_fire():
        return
    schedule = CronSchedule.parse(expr.text, name)
    x = data.draw(instants(name), label="x")
    y = x + data.draw(st.integers(0, 3 * 86400), label="delta")
    nx = schedule.next_after(EPOCH + timedelta(seconds=x))
    ny = schedule.next_after(EPOCH + timedelta(seconds=y))
    assert nx <= ny
    assert nx > EPOCH + timedelta(seconds=x)


@pytest.mark.skipif(not GAPS, reason="no tz database: no zone with a DST gap")
@SETTINGS
@given(data=st.data())
def test_skipped_times_fire_once_at_the_transition(data: st.DataObject) -> None:
    """Expressions that match inside a spring-forward gap fire at the transition, once."""
    name, transition = data.draw(st.sampled_from(GAPS), label="gap")
    tz = zone(name)
    gap_start = local(transition - 1, tz).replace(tzinfo=None) + SECOND
    gap_end = local(transition, tz).replace(tzinfo=None)
    gap = (gap_end - gap_start) // SECOND
    skipped = gap_start + data.draw(st.integers(0, gap - 1), label="skipped") * SECOND
    # Build the fields around a skipped wall time, so most expressions match in the gap.
    expr = data.draw(
        expressions(
            seconds=st.sampled_from([skipped.second, 0, 30, 59]),
            minutes=st.sampled_from(sorted({skipped.minute, (skipped.minute + 15) % 60, 0})),
            hours=st.sampled_from(sorted({skipped.hour, gap_end.hour})),
        ),
        label="expr",
    )
    if not expr.can_fire():
        return
    schedule = CronSchedule.parse(expr.text, name)
    after = transition - data.draw(st.integers(1, 3600), label="before")

    expected = brute_force(expr, tz, after, window=3 * 3600)
    actual = schedule.next_after(EPOCH + timedelta(seconds=after))
    if expected is None:
        assert ts(actual) > after + 3 * 3600
        return
    assert ts(actual) == expected
    if expected == transition:
        event("fires at the transition")
    # The fire after that one is also what the brute force finds: never the transition again.
    expected_next = brute_force(expr, tz, expected, window=3 * 3600)
    actual_next = schedule.next_after(actual)
    assert actual_next > actual
    if expected_next is None:
        assert ts(actual_next) > expected + 3 * 3600
    else:
        assert ts(actual_next) == expected_next
