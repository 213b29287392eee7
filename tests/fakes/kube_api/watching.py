"""What a watcher sees of each stored change, as the watch cache's ``cacheWatcher`` sends it.

With a selector, an object that stops matching is reported DELETED (its previous state at
the change's version) and one that starts matching ADDED; changes to objects that match
neither before nor after are not sent.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from tests.fakes.kube_api.errors import ApiError
from tests.fakes.kube_api.resources import ResourceType
from tests.fakes.kube_api.store import Change


def watch_event(
    rt: ResourceType, change: Change, matches: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    """The ``{"type", "object"}`` event this change is to a watcher, or None."""
    before = change.previous is not None and matches(change.previous)
    if change.type == "DELETED":
        return _event("DELETED", rt, change.object) if before else None
    now = matches(change.object)
    if now:
        return _event("MODIFIED" if before else "ADDED", rt, change.object)
    if before and change.previous is not None:
        gone = copy.deepcopy(change.previous)
        gone["metadata"]["resourceVersion"] = str(change.resource_version)
        return _event("DELETED", rt, gone)
    return None


def _event(kind: str, rt: ResourceType, stored: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": rt.to_view(stored)}


def error_event(error: ApiError) -> dict[str, Any]:
    return {"type": "ERROR", "object": error.status()}


def encode_event(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"
