"""Times and JSON as Langfuse's server, a JavaScript program, reads and writes them:
``new Date(...)`` and zod's ``datetime()`` for times, ``toISOString()`` for the times it
answers, ``JSON.parse`` for bodies and query parameters.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)
_STRICT_ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time_ms(text: str, *, strict: bool = False) -> int | None:
    """Epoch milliseconds of an ISO 8601 time, or None if it is not one.

    ``strict`` takes only what zod's ``datetime({offset: true})`` takes: date, ``T``,
    time with seconds, and ``Z`` or an offset. Otherwise a date alone, a time without
    seconds and a time without offset (read as UTC) pass too, like JavaScript's
    ``new Date(...)``. Fractions of a millisecond are dropped, as Langfuse stores
    milliseconds.
    """
    text = text.strip()
    if strict and not _STRICT_ISO_RE.match(text):
        return None
    match = _ISO_RE.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    offset = timedelta(0)
    if zone and zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
        if hours > 23 or minutes > 59:
            return None
        offset = sign * timedelta(hours=hours, minutes=minutes)
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0")[:3].ljust(3, "0")) * 1000,
            tzinfo=timezone(offset),
        )
    except ValueError:
        return None
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def format_ms(ms: int) -> str:
    """``2026-10-01T12:00:00.000Z``: how Langfuse's API writes times."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str | bytes) -> Any:
    """``JSON.parse``: like ``json.loads``, but ``NaN`` and ``Infinity`` are errors."""
    return json.loads(text, parse_constant=_no_constant)
