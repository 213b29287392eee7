"""Durations in policy files: `250ms`, `30s`, `10m`, `2h`, or a compound such as `1h30m`.

The model holds a duration as a float number of seconds. In YAML a duration is always a
string with a unit, so that `10` can never be read as ten seconds by one reader and ten
minutes by another. Python callers may pass a number of seconds directly.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, PlainSerializer, ValidationInfo, WithJsonSchema

__all__ = [
    "DURATION_PATTERN",
    "Duration",
    "DurationMarker",
    "format_duration",
    "parse_duration",
]

_NUMBER: Final = r"[0-9]+(?:\.[0-9]+)?"

DURATION_PATTERN: Final = (
    rf"^(?=[0-9])(?:{_NUMBER}h)?(?:{_NUMBER}m(?!s))?(?:{_NUMBER}s)?(?:{_NUMBER}ms)?$"
)
"""One or more `<number><unit>` parts, largest unit first, each unit at most once."""

_PART = re.compile(rf"({_NUMBER})(ms|h|m|s)")
_WHOLE = re.compile(DURATION_PATTERN)
_SECONDS_PER_UNIT: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

DURATION_HINT: Final = "must be a duration such as 250ms, 30s, 10m, 2h or 1h30m"


def parse_duration(text: str) -> float:
    """Return the number of seconds in `text`, e.g. `"1h30m"` → `5400.0`.

    Raises ValueError for anything else than unit-suffixed parts (`ms`, `s`, `m`, `h`) in
    decreasing order of size, each unit used at most once.
    """
    if not isinstance(text, str) or not _WHOLE.fullmatch(text):
        raise ValueError(DURATION_HINT)
    seconds = sum(float(number) * _SECONDS_PER_UNIT[unit] for number, unit in _PART.findall(text))
    # Keep whole milliseconds exact: 0.1s + 0.2s is 0.30000000000000004 otherwise.
    return round(seconds, 9)


def format_duration(seconds: float) -> str:
    """Return the shortest policy spelling of `seconds`, e.g. `5400.0` → `"1h30m"`.

    `parse_duration(format_duration(x)) == x` for every non-negative finite `x` with at
    most nine decimals.
    """
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {seconds!r}")
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{_plain(seconds * 1000)}ms"
    whole = int(seconds)
    fraction = round(seconds - whole, 9)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs or fraction:
        parts.append(f"{_plain(secs + fraction)}s")
    return "".join(parts)


def _plain(value: float) -> str:
    """A number without exponent or trailing zeros: 250.0 → '250', 0.5 → '0.5'."""
    text = f"{round(value, 9):.9f}".rstrip("0").rstrip(".")
    return text or "0"


class DurationMarker:
    """Marks a field as a duration, so error messages can show bounds as durations."""

    def __repr__(self) -> str:
        return "DurationMarker()"


def _validate(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    context = info.context
    strings_only = isinstance(context, dict) and context.get("durations") == "strings"
    if strings_only or isinstance(value, bool):
        raise ValueError(DURATION_HINT)
    return value  # a number of seconds, checked as a float next


Duration = Annotated[
    float,
    DurationMarker(),
    BeforeValidator(_validate),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]
"""A duration: a string like `10m` in YAML and JSON, a float number of seconds in Python."""
