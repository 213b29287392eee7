"""``Retry-After`` read once, in ``coalmine.shared.retry.parse_retry_after``: every wait
it gives is finite, ``>= 0`` and capped, whatever the header says, and each caller (the
span exporter, the request budget of the Langfuse reads, the label moves) waits what it
gives."""

from __future__ import annotations

import math

import httpx
import pytest

from coalmine.shared.retry import parse_retry_after
from controller.errors import LabelTemporaryError
from controller.labels import LangfusePromptLabels
from controller.source.budget import DEFAULT_RETRY_AFTER, MAX_RETRY_AFTER, RequestBudget
from proxy.spans import EXPORT_BACKOFF, RETRY_AFTER_CAP, retry_delay

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
CAP = 30.0
HUGE = "9" * 5000  # past float's range and Python's limit for int("...")


@pytest.mark.parametrize(
    ("header", "wait"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("0", 0.0),
        ("7", 7.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("007", 7.0),
        ("-3", 0.0),
        ("-0", 0.0),
        ("3600", CAP),
        ("1" + "0" * 30, CAP),
        (HUGE, CAP),
        ("-" + HUGE, 0.0),
        ("nan", None),
        ("NaN", None),
        ("-nan", None),
        ("inf", None),
        ("-inf", None),
        ("Infinity", None),
        ("1e3", None),
        ("1e400", None),
        ("+5", None),
        ("1_0", None),
        ("0x10", None),
        ("\u0663", None),  # ARABIC-INDIC DIGIT THREE
        ("5 s", None),
        ("soon", None),
        ("\x00", None),
        ("Thu, 01 Jan 2026 00:00:10 GMT", 10.0),
        ("Thu, 01 Jan 2026 00:00:10 +0000", 10.0),
        ("Thu, 01 Jan 2026 00:00:10", 10.0),  # no zone: GMT
        ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),  # in the past
        ("Mon, 01 Jan 0001 00:00:00 GMT", 0.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", CAP),  # far in the future
        ("Sunday, 06-Nov-94 08:49:37 GMT", 0.0),  # RFC 850, obsolete but allowed
        ("Sun Nov  6 08:49:37 1994", 0.0),  # asctime
        ("Thu, 01 Jan 99999 00:00:00 GMT", None),
        ("Thu, 32 Jan 2026 00:00:10 GMT", None),
        ("Thu, 01 Jan 2026 25:00:10 GMT", None),
        ("Thu, 01 Jan 2026 00:00:10 +9999", None),
    ],
)
def test_what_a_retry_after_asks_for(header: str | None, wait: float | None) -> None:
    got = parse_retry_after(header, now=NOW, cap=CAP)
    assert got == (None if wait is None else pytest.approx(wait))
    if got is not None:
        assert math.isfinite(got) and 0.0 <= got <= CAP


@pytest.mark.parametrize("cap", [float("nan"), float("inf"), -1.0])
def test_the_cap_must_be_a_finite_wait(cap: float) -> None:
    with pytest.raises(ValueError, match="cap must be finite"):
        parse_retry_after("1", now=NOW, cap=cap)


# ---------------------------------------------------------------------------- the callers


class NoJitter:
    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


@pytest.mark.parametrize(
    ("header", "wait"), [("nan", 0.5), ("inf", 0.5), (HUGE, RETRY_AFTER_CAP), ("-3", 0.0)]
)
def test_the_span_exporter_waits_what_the_header_asks(header: str, wait: float) -> None:
    answer = httpx.Response(429, headers={"Retry-After": header})
    assert retry_delay(EXPORT_BACKOFF, 1, answer, now=NOW, rng=NoJitter()) == wait


@pytest.mark.parametrize(
    ("header", "wait"),
    [("nan", DEFAULT_RETRY_AFTER), ("inf", DEFAULT_RETRY_AFTER), (HUGE, MAX_RETRY_AFTER)],
)
def test_the_langfuse_budget_holds_off_what_the_header_asks(header: str, wait: float) -> None:
    budget = RequestBudget(clock=lambda: 100.0)
    assert budget.hold_off(header, wall_now=NOW) == wait
    assert budget.blocked == 100.0 + wait


@pytest.mark.parametrize(
    ("header", "wait"),
    [("nan", DEFAULT_RETRY_AFTER), ("-inf", DEFAULT_RETRY_AFTER), (HUGE, MAX_RETRY_AFTER)],
)
def test_a_label_move_waits_what_the_header_asks(header: str, wait: float) -> None:
    def rate_limited(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": header})

    budget = RequestBudget(clock=lambda: 100.0)
    labels = LangfusePromptLabels(
        "http://langfuse.invalid",
        "pk-lf-test",
        "sk-lf-test",
        budget=budget,
        transport=httpx.MockTransport(rate_limited),
    )
    with labels, pytest.raises(LabelTemporaryError, match=r"rate limited \(429\)") as limited:
        labels.move("checkout", "canary", 1)
    assert limited.value.delay == wait
    assert budget.blocked == 100.0 + wait
