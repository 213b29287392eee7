"""The path of a request target, made safe to route on and to send on.

A path is routed and sent as one and the same string: its dot segments removed (RFC 3986
section 5.2.4, ``%2e`` counting as ``.``), so that ``/v1/../admin`` is routed, and
forwarded, as ``/admin``. A path whose ``..`` would climb above the root, or that still
holds a dot segment once decoded (an encoded ``/`` next to dots, which an upstream
could resolve again), is refused.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import unquote


class TargetPath(NamedTuple):
    """A request path without dot segments: ``raw`` as sent upstream, ``decoded`` as
    routed (a named tuple: one is made for every request)."""

    raw: str
    decoded: str


class BadPathError(ValueError):
    """A request path the proxy refuses: it is not absolute, or it leaves the root."""


def _dot_segment(segment: str) -> str | None:
    """``.`` or ``..`` when the segment is one, spelt plainly or percent-encoded."""
    if not segment or len(segment) > 6:  # "%2e%2e" is the longest
        return None
    plain = segment.replace("%2e", ".").replace("%2E", ".")
    return plain if plain in (".", "..") else None


def remove_dot_segments(raw: str) -> str:
    """An absolute path with its ``.`` and ``..`` segments resolved.

    Raises BadPathError when the path does not start with ``/`` or a ``..`` climbs above
    the root (where RFC 3986 would silently stop).
    """
    if not raw.startswith("/"):
        raise BadPathError(f"the request path {raw!r} does not start with '/'")
    segments = raw[1:].split("/")
    kept: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        dots = _dot_segment(segment)
        if dots is None:
            kept.append(segment)
            continue
        if dots == "..":
            if not kept:
                raise BadPathError(f"the request path {raw!r} climbs above the root")
            kept.pop()
        if index == last:
            kept.append("")  # "/a/b/.." is "/a/": a directory, as RFC 3986 resolves it
    return "/" + "/".join(kept)


def target_path(raw: str) -> TargetPath:
    """The path to route and send for a raw request path (without its query).

    Raises BadPathError for a path that is refused.
    """
    if "." not in raw and "%" not in raw and raw.startswith("/"):
        return TargetPath(raw, raw)  # nothing to resolve or decode
    resolved = remove_dot_segments(raw)
    decoded = unquote(resolved, errors="replace") if "%" in resolved else resolved
    if decoded != resolved and any(segment in (".", "..") for segment in decoded.split("/")):
        raise BadPathError(f"the request path {raw!r} hides a dot segment behind an encoded '/'")
    return TargetPath(resolved, decoded)
