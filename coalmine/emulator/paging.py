"""Page-numbered lists (``page`` from 1, ``limit``) and path segments as sent.

Langfuse's page-numbered routes answer ``meta: {page, limit, totalItems, totalPages}``
and check ``page`` and ``limit`` with zod's ``coerce.number().int()``: a positive
integer each, ``limit`` at most ``max_limit`` where the route caps it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from fastapi import Request

from coalmine.emulator.errors import invalid, issue


@dataclass(frozen=True)
class Page:
    """Which page of a list a request asks for."""

    page: int
    limit: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit

    def meta(self, total: int) -> dict[str, int]:
        return {
            "page": self.page,
            "limit": self.limit,
            "totalItems": total,
            "totalPages": math.ceil(total / self.limit),
        }


def positive_int(
    params: Mapping[str, str], key: str, problems: list[dict[str, Any]], maximum: int | None
) -> int | None:
    text = params.get(key)
    if text is None or text == "":
        return None
    try:
        number = int(text)
    except ValueError:
        problems.append(issue("invalid_type", [key], "Invalid input: expected int, received NaN"))
        return None
    if number < 1:
        problems.append(issue("too_small", [key], "Too small: expected number to be >=1"))
    elif maximum is not None and number > maximum:
        problems.append(issue("too_big", [key], f"Too big: expected number to be <={maximum}"))
    return number


def page_of(
    params: Mapping[str, str], *, default_limit: int = 50, max_limit: int | None = None
) -> Page:
    """``page`` and ``limit`` of a query, or a 400 with zod's issues."""
    problems: list[dict[str, Any]] = []
    page = positive_int(params, "page", problems, None)
    limit = positive_int(params, "limit", problems, max_limit)
    if problems:
        raise invalid(problems)
    return Page(page or 1, limit or default_limit)


def raw_segments(request: Request) -> list[str]:
    """The request path's segments, each URL-decoded on its own, so an encoded ``/``
    in a name (``team%2Fgolden``) stays inside its segment."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    path = raw.decode("latin-1").split("?", 1)[0]
    return [unquote(part) for part in path.strip("/").split("/")]


def dumps(value: Any) -> str | None:
    """A JSON value as stored; None stays NULL."""
    return None if value is None else json.dumps(value)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
