"""gqm.cron: parsing, errors that name the field, next_after, and the DST rule."""

from __future__ import annotations

import dataclasses
import pickle
import zoneinfo
from datetime import UTC, datetime, timedelta, timezone

import pytest

import gqm
from gqm.cron import CronError, CronSchedule

AVAILABLE = zoneinfo.available_timezones()


def needs(*zones: str) -> pytest.MarkDecorator:
    """Skip a test that needs time zones when no tz database is installed."""
    missing = [z for z in zones if z not in AVAILABLE]
    return pytest.mark.skipif(bool(missing), reason=f"no tz database entry for {missing}")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def fires(expr: str, after: datetime, count: int = 3, timezone: str = "UTC") -> list[datetime]:
    """The next ``count`` fire instants after ``after``."""
    schedule = CronSchedule.parse(expr, timezone)
    out = []
    for _ in range(count):
        after = schedule.next_after(after)
        out.append(after)
    return out


# -- the README and the basics ------------------------------------------------------------


@needs("Asia/Jakarta")
def test_readme_daily_cleanup_in_jakarta() -> None:
    """The README's ``0 0 2 * * *`` in Asia/Jakarta (UTC+7) fires at 02:00 WIB = 19:00 UTC."""
    schedule = CronSchedule.parse("0 0 2 * * *", "Asia/Jakarta")
    assert schedule.expr == "0 0 2 * * *"
    assert schedule.timezone == "Asia/Jakarta"
    assert fires("0 0 2 * * *", utc(2026, 1, 1), 2, "Asia/Jakarta") == [
        utc(2026, 1, 1, 19),
        utc(2026, 1, 2, 19),
    ]


def test_default_timezone_is_utc() -> None:
    """Without a timezone the schedule runs in UTC."""
    schedule = CronSchedule.parse("0 0 2 * * *")
    assert schedule.timezone == "UTC"
    assert schedule.next_after(utc(2026, 1, 1)) == utc(2026, 1, 1, 2)


def test_result_is_utc_whole_seconds_strictly_after() -> None:
    """next_after returns an aware UTC datetime with whole seconds, strictly after ``after``."""
    schedule = CronSchedule.parse("* * * * * *")
    result = schedule.next_after(utc(2026, 1, 1, 12))
    assert result == utc(2026, 1, 1, 12, 0, 1)
    assert result.tzinfo is UTC
    # A fraction of a second: the next whole second, never the same instant.
    assert schedule.next_after(utc(2026, 1, 1, 12) + timedelta(microseconds=500_000)) == utc(
        2026, 1, 1, 12, 0, 1
    )
    assert CronSchedule.parse("0 0 12 * * *").next_after(utc(2026, 1, 1, 12)) == utc(2026, 1, 2, 12)


def test_after_may_be_in_any_zone() -> None:
    """``after`` is an instant: the zone it is written in does not matter."""
    schedule = CronSchedule.parse("0 0 * * * *")
    plus_five = timezone(timedelta(hours=5))
    assert schedule.next_after(datetime(2026, 1, 1, 5, 30, tzinfo=plus_five)) == utc(2026, 1, 1, 1)


def test_naive_after_is_refused() -> None:
    """A naive ``after`` is ambiguous, so it raises (a CronError, which is a ValueError)."""
    schedule = CronSchedule.parse("0 0 * * * *")
    with pytest.raises(CronError, match="timezone-aware"):
        schedule.next_after(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_after(datetime(2026, 1, 1))


def test_five_fields_mean_second_zero() -> None:
    """A 5-field expression has no seconds field: it fires at second 0."""
    assert fires("*/15 * * * *", utc(2026, 1, 1, 0, 0, 1)) == [
        utc(2026, 1, 1, 0, 15),
        utc(2026, 1, 1, 0, 30),
        utc(2026, 1, 1, 0, 45),
    ]
    five, six = CronSchedule.parse("30 2 * * 1-5"), CronSchedule.parse("0 30 2 * * 1-5")
    after = utc(2026, 1, 1)
    assert fires(five.expr, after, 5) == fires(six.expr, after, 5)


def test_steps_ranges_and_lists() -> None:
    """``*/n``, ``a-b/n``, ``a/n`` (a to the maximum) and lists combine as a union."""
    schedule = CronSchedule.parse("0 5/20,1-3 10-16/3 * * *")
    minutes = [m for m in range(60) if schedule.matches(datetime(2026, 1, 1, 10, m))]
    assert minutes == [1, 2, 3, 5, 25, 45]
    hours = [h for h in range(24) if schedule.matches(datetime(2026, 1, 1, h, 5))]
    assert hours == [10, 13, 16]
    assert [
        s
        for s in range(60)
        if CronSchedule.parse("*/25 * * * * *").matches(datetime(2026, 1, 1, 0, 0, s))
    ] == [0, 25, 50]


def test_month_and_day_names_are_case_insensitive() -> None:
    """JAN-DEC and SUN-SAT work in any case, alone, in ranges and with steps."""
    schedule = CronSchedule.parse("0 0 9 * jan-Mar MON-fri")
    assert schedule.matches(datetime(2026, 1, 5, 9))  # a Monday in January
    assert not schedule.matches(datetime(2026, 1, 4, 9))  # a Sunday
    assert not schedule.matches(datetime(2026, 4, 6, 9))  # a Monday in April
    quarterly = CronSchedule.parse("0 0 0 1 JAN/3 *")
    assert [m for m in range(1, 13) if quarterly.matches(datetime(2026, m, 1))] == [1, 4, 7, 10]


@pytest.mark.parametrize("sunday", ["0", "7", "SUN", "sun", "0,7"])
def test_sunday_is_0_and_7(sunday: str) -> None:
    """Day-of-week 0 and 7 are both Sunday."""
    schedule = CronSchedule.parse(f"0 0 0 * * {sunday}")
    assert schedule.next_after(utc(2026, 1, 1)) == utc(2026, 1, 4)  # a Sunday
    assert schedule.next_after(utc(2026, 1, 4)) == utc(2026, 1, 11)


def test_ranges_may_end_at_7_for_sunday() -> None:
    """``FRI-7`` is Friday to Sunday; ``5-7/2`` is Friday and Sunday."""
    weekend = CronSchedule.parse("0 0 0 * * FRI-7")
    odd = CronSchedule.parse("0 0 0 * * 5-7/2")
    days = range(4, 11)  # Sunday 4 .. Saturday 10 January 2026
    assert [d for d in days if weekend.matches(datetime(2026, 1, d))] == [4, 9, 10]
    assert [d for d in days if odd.matches(datetime(2026, 1, d))] == [4, 9]


def test_star_step_on_day_of_week_stops_at_saturday() -> None:
    """``*`` in day-of-week is 0-6, so ``*/2`` is SUN, TUE, THU, SAT (Sunday once)."""
    schedule = CronSchedule.parse("0 0 0 * * */2")
    days = [d for d in range(4, 11) if schedule.matches(datetime(2026, 1, d))]  # Sun 4 .. Sat 10
    assert days == [4, 6, 8, 10]


@pytest.mark.parametrize(
    ("macro", "equivalent"),
    [
        ("@yearly", "0 0 0 1 1 *"),
        ("@annually", "0 0 0 1 1 *"),
        ("@monthly", "0 0 0 1 * *"),
        ("@weekly", "0 0 0 * * 0"),
        ("@daily", "0 0 0 * * *"),
        ("@midnight", "0 0 0 * * *"),
        ("@hourly", "0 0 * * * *"),
        ("@DAILY", "0 0 0 * * *"),
    ],
)
def test_macros(macro: str, equivalent: str) -> None:
    """Each macro fires exactly as its expansion does."""
    after = utc(2026, 2, 17, 13, 14, 15)
    assert fires(macro, after, 3) == fires(equivalent, after, 3)
    assert str(CronSchedule.parse(macro)) == f"{macro} (UTC)"


def test_macro_fire_times() -> None:
    """The macros' first fire times after a Tuesday afternoon."""
    after = utc(2026, 2, 17, 13, 14, 15)
    assert fires("@yearly", after, 1) == [utc(2027, 1, 1)]
    assert fires("@monthly", after, 1) == [utc(2026, 3, 1)]
    assert fires("@weekly", after, 1) == [utc(2026, 2, 22)]
    assert fires("@daily", after, 1) == [utc(2026, 2, 18)]
    assert fires("@hourly", after, 1) == [utc(2026, 2, 17, 14)]


# -- day of month and day of week ---------------------------------------------------------


def test_both_day_fields_restricted_match_either() -> None:
    """The Vixie cron OR rule: ``13 * FRI`` is every 13th and every Friday."""
    assert fires("0 0 0 13 * FRI", utc(2026, 1, 1), 4) == [
        utc(2026, 1, 2),  # Friday
        utc(2026, 1, 9),  # Friday
        utc(2026, 1, 13),  # Tuesday the 13th
        utc(2026, 1, 16),  # Friday
    ]


@pytest.mark.parametrize("star", ["*", "?"])
def test_one_day_field_restricted_is_the_only_one_that_counts(star: str) -> None:
    """With the other day field ``*`` or ``?``, only the restricted one matters."""
    assert fires(f"0 0 0 13 * {star}", utc(2026, 1, 1), 2) == [utc(2026, 1, 13), utc(2026, 2, 13)]
    assert fires(f"0 0 0 {star} * FRI", utc(2026, 1, 1), 2) == [utc(2026, 1, 2), utc(2026, 1, 9)]


def test_star_step_in_a_day_field_counts_as_restricted() -> None:
    """``*/2`` is not a bare ``*``: with a restricted day of week the OR rule applies."""
    schedule = CronSchedule.parse("0 0 0 */10 * MON")
    assert schedule.matches(datetime(2026, 1, 11))  # the 11th (1 + 10), a Sunday
    assert schedule.matches(datetime(2026, 1, 5))  # a Monday, the 5th


def test_feb_29_fires_in_leap_years_only() -> None:
    """``0 0 0 29 2 *`` fires on Feb 29 2028, then 2032; and across the 2100 gap."""
    assert fires("0 0 0 29 2 *", utc(2026, 1, 1), 2) == [utc(2028, 2, 29), utc(2032, 2, 29)]
    assert fires("0 0 0 29 2 *", utc(2096, 3, 1), 1) == [utc(2104, 2, 29)]


def test_day_31_skips_short_months() -> None:
    """The 31st only exists in seven months."""
    assert fires("0 0 0 31 * *", utc(2026, 1, 31), 3) == [
        utc(2026, 3, 31),
        utc(2026, 5, 31),
        utc(2026, 7, 31),
    ]


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 61 * * * *", 'cron "0 61 * * * *": field 2 (minute) value 61 is out of range 0-59'),
        ("60 * * * * *", "field 1 (second) value 60 is out of range 0-59"),
        ("0 0 24 * * *", "field 3 (hour) value 24 is out of range 0-23"),
        ("0 0 0 0 * *", "field 4 (day-of-month) value 0 is out of range 1-31"),
        ("0 0 0 32 * *", "field 4 (day-of-month) value 32 is out of range 1-31"),
        ("0 0 0 * 13 *", "field 5 (month) value 13 is out of range 1-12"),
        ("0 0 0 * * 8", "field 6 (day-of-week) value 8 is out of range 0-7"),
        ("61 * * * *", "field 1 (minute) value 61 is out of range 0-59"),
        ("* * * * 8", "field 5 (day-of-week) value 8 is out of range 0-7"),
        ("0 1,,2 * * * *", 'field 2 (minute) has an empty item in "1,,2"'),
        ("0 1, * * * *", 'field 2 (minute) has an empty item in "1,"'),
        ("0 0 5-2 * * *", 'field 3 (hour) range "5-2" is reversed: 5 > 2'),
        ("0 0 0 * * FRI-SUN", 'field 6 (day-of-week) range "FRI-SUN" is reversed: 5 > 0'),
        ("*/0 * * * * *", 'field 1 (second) step 0 in "*/0" must be at least 1'),
        ("0 0 1-5/0 * * *", 'field 3 (hour) step 0 in "1-5/0" must be at least 1'),
        ("0 0 0 * * MON/x", 'field 6 (day-of-week) step "x" in "MON/x" is not a number'),
        ("0 0 0 */1/2 * *", 'field 4 (day-of-month) item "*/1/2" has more than one "/"'),
        ("0 0 1-2-3 * * *", 'field 3 (hour) range "1-2-3" has more than one "-"'),
        ("0 0 -1 * * *", 'field 3 (hour) has a missing value in "-1"'),
        ("0 0 1- * * *", 'field 3 (hour) has a missing value in "1-"'),
        ("0 0 0 * FOO *", 'field 5 (month) value "FOO" is not a number or a name JAN-DEC'),
        ("0 0 0 * * MONDAY", 'field 6 (day-of-week) value "MONDAY" is not a number or a name'),
        ("0 0 0 * MON *", 'field 5 (month) value "MON" is not a number or a name JAN-DEC'),
        ("0 0 JAN * * *", 'field 3 (hour) value "JAN" is not a number'),
        ("0 0 1.5 * * *", 'field 3 (hour) value "1.5" is not a number'),
        ("0 0 ² * * *", 'field 3 (hour) value "²" is not a number'),
        ("? * * * * *", "field 1 (second) may not be ?"),
        ("0 0 0 ?/2 * *", 'field 4 (day-of-month) "?/2": ? cannot take a step'),
        ("", 'cron "": the expression is empty'),
        ("   ", "the expression is empty"),
        ("* * * *", "expected 6 fields (second minute hour day-of-month month day-of-week) or 5"),
        ("* * * * * * *", "got 7"),
        ("@often", "unknown macro @often (known: @yearly"),
        ("@daily extra", "unknown macro @daily extra"),
    ],
)
def test_errors_name_the_field(expr: str, message: str) -> None:
    """Every bad expression raises CronError, and the message points at the bad field."""
    with pytest.raises(CronError) as info:
        CronSchedule.parse(expr)
    assert message in str(info.value)
    assert str(info.value).startswith(f'cron "{expr}"')


@pytest.mark.parametrize(
    ("expr", "field"),
    [
        ("0 0 0 30 2 *", "field 4 (day-of-month)"),
        ("0 0 0 31 2,4,6,9,11 *", "field 4 (day-of-month)"),
        ("0 0 30,31 2 ?", "field 3 (day-of-month)"),
    ],
)
def test_never_firing_expression_raises(expr: str, field: str) -> None:
    """A day of month that no chosen month has (Feb 30) is refused at parse time."""
    with pytest.raises(CronError, match="never fires") as info:
        CronSchedule.parse(expr)
    assert field in str(info.value)


def test_impossible_day_with_a_weekday_still_fires() -> None:
    """With both day fields restricted the OR rule keeps the weekdays: Feb 30 or Monday."""
    assert fires("0 0 0 30 2 MON", utc(2026, 1, 1), 2) == [utc(2026, 2, 2), utc(2026, 2, 9)]


@pytest.mark.parametrize("name", ["Mars/Base", "", "utc", "../etc/passwd", "/etc/localtime"])
def test_unknown_timezone_raises(name: str) -> None:
    """The timezone must be a valid IANA name."""
    with pytest.raises(CronError, match="unknown timezone"):
        CronSchedule.parse("0 0 2 * * *", name)


def test_cron_error_is_a_configuration_error() -> None:
    """CronError sits under gqm's error root and is a ValueError."""
    assert issubclass(CronError, gqm.ConfigurationError)
    assert issubclass(CronError, gqm.GqmError)
    assert issubclass(CronError, ValueError)


def test_no_fire_time_before_the_end_of_datetime() -> None:
    """A schedule whose next fire is past year 9999 raises instead of overflowing."""
    with pytest.raises(CronError, match="no fire time"):
        CronSchedule.parse("@yearly").next_after(utc(9999, 6, 1))


# -- the object ---------------------------------------------------------------------------


def test_schedule_is_immutable_hashable_and_picklable() -> None:
    """A schedule cannot be changed, compares by expression and zone, and pickles."""
    schedule = CronSchedule.parse("0 0 2 * * *")
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.expr = "* * * * * *"  # type: ignore[misc]
    assert schedule == CronSchedule("0 0 2 * * *", "UTC")
    assert hash(schedule) == hash(CronSchedule.parse("0 0 2 * * *"))
    assert schedule != CronSchedule.parse("0 0 3 * * *")
    copy = pickle.loads(pickle.dumps(schedule))
    assert copy == schedule
    assert copy.next_after(utc(2026, 1, 1)) == utc(2026, 1, 1, 2)
    assert str(schedule) == "0 0 2 * * * (UTC)"
    assert "0 0 2 * * *" in repr(schedule)


def test_matches_takes_a_wall_clock_time() -> None:
    """matches() checks the fields against a naive wall-clock time; an aware one is converted
    to the schedule's zone first. Microseconds are ignored."""
    schedule = CronSchedule.parse("30 15 14 * * *")
    assert schedule.matches(datetime(2026, 5, 1, 14, 15, 30))
    assert schedule.matches(datetime(2026, 5, 1, 14, 15, 30, 999_999))
    assert not schedule.matches(datetime(2026, 5, 1, 14, 15, 31))
    plus_two = timezone(timedelta(hours=2))
    assert schedule.matches(datetime(2026, 5, 1, 16, 15, 30, tzinfo=plus_two))


@needs("Europe/London")
def test_matches_converts_an_aware_time_to_the_zone() -> None:
    """An aware time is read as wall-clock time in the schedule's zone."""
    schedule = CronSchedule.parse("0 0 9 * * *", "Europe/London")
    assert schedule.matches(utc(2026, 7, 1, 8))  # 09:00 BST
    assert not schedule.matches(datetime(2026, 7, 1, 8))  # naive: 08:00 wall clock


# -- daylight saving time -----------------------------------------------------------------


@needs("America/New_York")
def test_spring_forward_skipped_time_fires_once_at_the_transition() -> None:
    """02:30 does not exist on 2026-03-08 in New York: it fires at 03:00 EDT (07:00 UTC),
    once, and on the next day at 02:30 EST again."""
    assert fires("0 30 2 * * *", utc(2026, 3, 7, 12), 3, "America/New_York") == [
        utc(2026, 3, 8, 7),  # 03:00 EDT: the first instant after the gap
        utc(2026, 3, 9, 6, 30),  # 02:30 EDT
        utc(2026, 3, 10, 6, 30),
    ]


@needs("America/New_York")
def test_several_skipped_times_fire_once() -> None:
    """02:00, 02:15, 02:30 and 02:45 are all skipped: one fire at 03:00 EDT for all four,
    which is also the fire for 03:00 itself when the expression matches it."""
    assert fires("0 */15 2 * * *", utc(2026, 3, 8), 2, "America/New_York") == [
        utc(2026, 3, 8, 7),
        utc(2026, 3, 9, 6),  # 02:00 EDT the next day
    ]
    assert fires("0 */15 2-3 * * *", utc(2026, 3, 8), 3, "America/New_York") == [
        utc(2026, 3, 8, 7),  # the four skipped times and 03:00: once
        utc(2026, 3, 8, 7, 15),  # 03:15 EDT
        utc(2026, 3, 8, 7, 30),
    ]


@needs("America/New_York")
def test_fall_back_repeated_time_fires_once_at_the_first_occurrence() -> None:
    """01:30 happens twice on 2026-11-01 in New York: it fires at the first (EDT, 05:30 UTC)
    only, not at the second (EST, 06:30 UTC)."""
    assert fires("0 30 1 * * *", utc(2026, 10, 31, 12), 3, "America/New_York") == [
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT
        utc(2026, 11, 2, 6, 30),  # 01:30 EST the next day
        utc(2026, 11, 3, 6, 30),
    ]


@needs("America/New_York")
def test_fall_back_hourly_does_not_repeat_the_hour() -> None:
    """An hourly schedule runs 01:00 EDT, then 02:00 EST: the repeated 01:00 is skipped."""
    assert fires("0 0 * * * *", utc(2026, 11, 1, 4, 30), 3, "America/New_York") == [
        utc(2026, 11, 1, 5),  # 01:00 EDT
        utc(2026, 11, 1, 7),  # 02:00 EST
        utc(2026, 11, 1, 8),
    ]


@needs("America/New_York")
def test_after_inside_the_repeated_hour() -> None:
    """From the second 01:10 (fold=1), the second 01:20 is a repeat, so the next fire of
    ``0 20 1 * * *`` is the next day."""
    new_york = zoneinfo.ZoneInfo("America/New_York")
    second_110 = datetime(2026, 11, 1, 1, 10, fold=1, tzinfo=new_york)
    first_110 = datetime(2026, 11, 1, 1, 10, fold=0, tzinfo=new_york)
    schedule = CronSchedule.parse("0 20 1 * * *", "America/New_York")
    assert schedule.next_after(first_110) == utc(2026, 11, 1, 5, 20)
    assert schedule.next_after(second_110) == utc(2026, 11, 2, 6, 20)


@needs("Australia/Lord_Howe")
def test_half_hour_dst_gap() -> None:
    """Lord Howe Island moves from 02:00 to 02:30 (+10:30 to +11): 02:15 fires at 02:30."""
    assert fires("0 15 2 * * *", utc(2026, 10, 3), 2, "Australia/Lord_Howe") == [
        utc(2026, 10, 3, 15, 30),  # 02:30 +11 on Oct 4, the transition
        utc(2026, 10, 4, 15, 15),  # 02:15 +11 on Oct 5
    ]


@needs("Europe/London")
def test_every_second_across_spring_forward() -> None:
    """An every-second schedule: the skipped hour collapses into one fire at the transition."""
    assert fires("* * * * * *", utc(2026, 3, 29, 0, 59, 58), 3, "Europe/London") == [
        utc(2026, 3, 29, 0, 59, 59),
        utc(2026, 3, 29, 1),  # 02:00 BST, standing for the skipped 01:00:00-01:59:59
        utc(2026, 3, 29, 1, 0, 1),
    ]
