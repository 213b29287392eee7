"""The request budget: a sliding window per minute (and hour and day), blocks for a 429's
Retry-After, time from an injected clock."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from coalmine.shared.retry import status_class
from controller.source.budget import (
    DEFAULT_RETRY_AFTER,
    HOBBY_PUBLIC_API_LIMIT,
    BudgetSettings,
    RequestBudget,
)
from tests.controller.source_support import FakeClock


def test_defaults_leave_headroom_under_the_hobby_limit() -> None:
    settings = BudgetSettings()
    assert settings.per_minute == 24
    assert settings.per_minute < HOBBY_PUBLIC_API_LIMIT
    assert settings.windows() == ((60.0, 24),)
    assert BudgetSettings(per_minute=80, per_day=90).windows() == ((60.0, 80), (86400.0, 90))


@pytest.mark.parametrize("bad", [{"per_minute": 0}, {"per_hour": -1}, {"per_day": 1.5}])
def test_settings_refuse_counts_below_one(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BudgetSettings(**bad)  # type: ignore[arg-type]


def test_a_minute_window_slides() -> None:
    budget = RequestBudget(BudgetSettings(per_minute=3), clock=FakeClock(0.0))
    assert [budget.try_acquire(t) for t in (0, 10, 20, 30)] == [True, True, True, False]
    assert budget.remaining(30) == 0
    assert budget.available_at(30) == 60  # when the request made at 0 leaves the window
    assert budget.try_acquire(60)
    assert not budget.try_acquire(61)
    assert budget.available_at(61) == 70
    assert budget.remaining(80) == 2  # 10 and 20 have left; 60 has not


def test_the_clock_is_used_when_no_time_is_given() -> None:
    clock = FakeClock(100.0)
    budget = RequestBudget(BudgetSettings(per_minute=1), clock=clock)
    assert budget.now() == 100.0
    assert budget.try_acquire() and not budget.try_acquire()
    assert budget.available_at() == 160.0
    clock.advance(60)
    assert budget.try_acquire()


def test_never_more_than_the_count_in_any_window() -> None:
    rng = random.Random(11)
    budget = RequestBudget(BudgetSettings(per_minute=5, per_hour=40), clock=FakeClock())
    times = sorted(rng.uniform(0, 7200) for _ in range(2000))
    granted = [t for t in times if budget.try_acquire(t)]
    for index, start in enumerate(granted):
        in_minute = [t for t in granted[index:] if t < start + 60]
        in_hour = [t for t in granted[index:] if t < start + 3600]
        assert len(in_minute) <= 5 and len(in_hour) <= 40
    assert len(granted) == 80  # the hourly bound is the binding one over two hours


def test_a_block_refuses_until_its_end_and_never_shortens() -> None:
    budget = RequestBudget(BudgetSettings(per_minute=10), clock=FakeClock(0.0))
    assert budget.blocked is None
    budget.blocked_until(100.0)
    budget.blocked_until(50.0)
    assert budget.blocked == 100.0
    assert not budget.try_acquire(99.9)
    assert budget.remaining(99.9) == 0
    assert budget.available_at(10.0) == 100.0
    assert budget.try_acquire(100.0)


def test_threads_share_one_budget() -> None:
    budget = RequestBudget(BudgetSettings(per_minute=50), clock=FakeClock(0.0))
    granted: list[bool] = []
    lock = threading.Lock()

    def spend() -> None:
        for _ in range(20):
            result = budget.try_acquire()
            with lock:
                granted.append(result)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert granted.count(True) == 50


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("60", 60.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("9999999", 86400.0),
        (None, DEFAULT_RETRY_AFTER),
        ("soon", DEFAULT_RETRY_AFTER),
        ("nan", DEFAULT_RETRY_AFTER),
        ("inf", DEFAULT_RETRY_AFTER),
    ],
)
def test_a_429_holds_off_for_its_retry_after(header: str | None, seconds: float) -> None:
    clock = FakeClock()
    budget = RequestBudget(clock=clock)
    assert budget.hold_off(header, wall_now=0.0) == seconds
    assert budget.blocked == clock.now + seconds


def test_retry_after_as_an_http_date() -> None:
    wall_now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    header = format_datetime(datetime(2026, 1, 1, 12, 0, 45, tzinfo=UTC), usegmt=True)
    assert header == "Thu, 01 Jan 2026 12:00:45 GMT"
    budget = RequestBudget(clock=FakeClock())
    assert budget.hold_off(header, wall_now=wall_now) == 45.0
    assert budget.hold_off(header, wall_now=wall_now + 100) == 0.0


def test_a_hold_off_starts_at_the_time_given() -> None:
    budget = RequestBudget(clock=FakeClock(1_000.0))
    assert budget.hold_off("30", now=5_000.0) == 30.0
    assert budget.blocked == 5_030.0
    assert not budget.try_acquire(5_029.0) and budget.try_acquire(5_030.0)


def test_status_classes() -> None:
    assert [status_class(s) for s in (200, 204, 302, 404, 429, 503)] == [
        "2xx",
        "2xx",
        "3xx",
        "4xx",
        "429",
        "5xx",
    ]
