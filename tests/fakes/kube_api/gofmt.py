"""Values printed as Go prints them in the API server's messages: ``%q`` for strings,
``%v`` for numbers, ``%#v`` for the maps and slices of an unstructured object.

A field error's "Invalid value: ..." part comes from ``fmt`` applied to the JSON value
decoded into ``interface{}``: strings as ``string``, integers as ``int64``, other numbers
as ``float64``, objects as ``map[string]interface {}`` and arrays as ``[]interface {}``.
"""

from __future__ import annotations

import math
import unicodedata
from decimal import Decimal
from typing import Any

_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t"}
_ESCAPES.update({"\v": r"\v", "\\": "\\\\", '"': '\\"'})


def quote(text: str) -> str:
    """``strconv.Quote``: printable characters kept, the rest escaped."""
    out = ['"']
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif unicodedata.category(char)[0] in {"C", "Z"} and char != " ":
            code = ord(char)
            if code < 0x80:
                out.append(f"\\x{code:02x}")
            elif code <= 0xFFFF:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def number(value: float) -> str:
    """``%v`` of a ``float64``: ``strconv.FormatFloat(v, 'g', -1, 64)``, the shortest
    digits, in exponent form when the exponent is below -4 or at least 6 (``1e+06``)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exponent
    power = point - 1
    prefix = "-" if sign else ""
    if power < -4 or power >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return prefix + digits + "0" * (point - len(digits))
    return f"{prefix}{digits[:point]}.{digits[point:]}"


def value(item: Any) -> str:
    """``%v`` for scalars as ``field.Error`` uses it (strings quoted, ``nil`` as null)."""
    if item is None:
        return '"null"'
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        return number(item)
    if isinstance(item, str):
        return quote(item)
    return go_syntax(item)


def go_syntax(item: Any) -> str:
    """``%#v`` of an unstructured JSON value."""
    if item is None:
        return "interface {}(nil)"
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        return number(item)
    if isinstance(item, str):
        return quote(item)
    if isinstance(item, dict):
        inner = ", ".join(f"{quote(k)}:{go_syntax(item[k])}" for k in sorted(item))
        return "map[string]interface {}{" + inner + "}"
    if isinstance(item, list):
        return "[]interface {}{" + ", ".join(go_syntax(x) for x in item) + "}"
    return str(item)
