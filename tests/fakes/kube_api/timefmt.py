"""Kubernetes time stamps: ``metav1.Time`` and ``metav1.MicroTime`` as the server reads and
writes them.

``Time`` is parsed with Go's ``time.RFC3339`` layout (a fractional second is accepted and
dropped) and written in UTC to the second. ``MicroTime`` is parsed with the layout
``2006-01-02T15:04:05.000000Z07:00``, which demands exactly six fractional digits, and is
written in UTC with six. A value the layout does not match fails the way Go's
``time.Parse`` does, with its message.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

MICRO_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
SECONDS_LAYOUT = "2006-01-02T15:04:05Z07:00"


class TimeParseError(ValueError):
    """A time stamp the layout does not match; the message is Go's."""


def _parse(value: str, *, micro: bool) -> datetime:
    layout = MICRO_LAYOUT if micro else SECONDS_LAYOUT
    rest = value
    numbers: list[int] = []

    def fail(element: str) -> TimeParseError:
        return TimeParseError(
            f'parsing time "{value}" as "{layout}": cannot parse "{rest}" as "{element}"'
        )

    for width, element, separator in (
        (4, "2006", "-"),
        (2, "01", "-"),
        (2, "02", "T"),
        (2, "15", ":"),
        (2, "04", ":"),
        (2, "05", ""),
    ):
        if not re.fullmatch(r"\d" * width, rest[:width]):
            raise fail(element)
        numbers.append(int(rest[:width]))
        rest = rest[width:]
        if separator:
            if not rest.startswith(separator):
                raise fail(separator)
            rest = rest[1:]
    micros = 0
    if micro:
        if not re.fullmatch(r"\.\d{6}", rest[:7]):
            raise fail(".000000")
        micros = int(rest[1:7])
        rest = rest[7:]
    else:
        fraction = re.match(r"[.,](\d+)", rest)
        if fraction:
            rest = rest[fraction.end() :]
    if rest == "Z":
        zone: timezone = UTC
    else:
        offset = re.fullmatch(r"([+-])(\d{2}):(\d{2})", rest)
        if not offset:
            raise fail("Z07:00")
        sign = 1 if offset.group(1) == "+" else -1
        zone = timezone(sign * timedelta(hours=int(offset.group(2)), minutes=int(offset.group(3))))
    year, month, day, hour, minute, second = numbers
    try:
        return datetime(year, month, day, hour, minute, second, micros, tzinfo=zone)
    except ValueError as error:
        words = ("day", "month", "hour", "minute", "second")
        what = next((word for word in words if word in str(error)), "date")
        raise TimeParseError(f'parsing time "{value}": {what} out of range') from error


def normalize_time(value: str) -> str:
    """A ``Time`` as the server stores it: UTC, to the second."""
    moment = _parse(value, micro=False).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def normalize_micro_time(value: str) -> str:
    """A ``MicroTime`` as the server stores it: UTC, six fractional digits."""
    moment = _parse(value, micro=True).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
