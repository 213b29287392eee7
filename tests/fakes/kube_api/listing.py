"""List and watch requests: their options, and the list itself.

A list is filtered by namespace, label selector and field selector, read at the version
``resourceVersion``/``resourceVersionMatch`` ask for (a version newer than the store's
waits, then fails with 504 like the real server's "Too large resource version"), and
paged with ``limit``/``continue``. A ``continue`` token carries the version of the first
page, so every page shows the same snapshot until that version leaves the history (410).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fakes.kube_api import errors
from tests.fakes.kube_api.bodies import Query
from tests.fakes.kube_api.errors import ApiError, FieldError, forbidden, not_supported
from tests.fakes.kube_api.resources import ResourceType, selectable_fields
from tests.fakes.kube_api.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from tests.fakes.kube_api.store import ObjectStore, TooOldError

CONTINUE_TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted "
    "between the time the first chunk was returned and now may show up in the list."
)
MATCHES = ["Exact", "NotOlderThan"]


@dataclass(frozen=True)
class ListOptions:
    labels: LabelSelector
    fields: FieldSelector
    limit: int = 0
    continue_token: str = ""
    resource_version: str = ""
    resource_version_match: str = ""
    watch: bool = False
    timeout_seconds: int | None = None


def _last(query: Query, name: str) -> str:
    values = query.get(name) or [""]
    return values[-1]


def _integer(query: Query, name: str) -> int | None:
    text = _last(query, name)
    if not text:
        return None
    try:
        return int(text)
    except ValueError as error:
        raise errors.bad_request(f'strconv.ParseInt: parsing "{text}": invalid syntax') from error


def list_options(rt: ResourceType, query: Query) -> ListOptions:
    try:
        labels = parse_label_selector(_last(query, "labelSelector"))
        fields = parse_field_selector(_last(query, "fieldSelector"), rt.field_labels)
    except SelectorError as error:
        raise errors.bad_request(str(error)) from error
    options = ListOptions(
        labels=labels,
        fields=fields,
        limit=max(_integer(query, "limit") or 0, 0),
        continue_token=_last(query, "continue"),
        resource_version=_last(query, "resourceVersion"),
        resource_version_match=_last(query, "resourceVersionMatch"),
        watch=_last(query, "watch") in {"true", "1"},
        timeout_seconds=_integer(query, "timeoutSeconds"),
    )
    problems: list[FieldError] = []
    match = options.resource_version_match
    if match:
        if options.watch:
            problems.append(
                forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden for watch")
            )
        elif not options.resource_version:
            problems.append(
                forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                )
            )
        elif options.continue_token:
            problems.append(
                forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                )
            )
        elif match not in MATCHES:
            problems.append(not_supported("resourceVersionMatch", match, MATCHES))
        elif match == "Exact" and options.resource_version == "0":
            problems.append(
                forbidden(
                    "resourceVersionMatch",
                    'resourceVersionMatch "exact" is forbidden for resourceVersion "0"',
                )
            )
    if problems:
        raise errors.invalid("meta.k8s.io", "ListOptions", "", problems)
    return options


def parse_version(text: str) -> int:
    try:
        version = int(text)
        if version < 0:
            raise ValueError
    except ValueError as error:
        raise errors.bad_request(
            f'invalid resource version "{text}": strconv.ParseUint: parsing "{text}": '
            "invalid syntax"
        ) from error
    return version


def matcher(namespace: str | None, options: ListOptions) -> Callable[[dict[str, Any]], bool]:
    """Whether a stored object is in the namespace (if any) and passes both selectors."""

    def matches(stored: dict[str, Any]) -> bool:
        meta = stored.get("metadata", {})
        if namespace is not None and meta.get("namespace") != namespace:
            return False
        return options.labels.matches(meta.get("labels")) and options.fields.matches(
            selectable_fields(stored)
        )

    return matches


def encode_continue(version: int, start: str) -> str:
    token = json.dumps(
        {"v": "meta.k8s.io/v1", "rv": version, "start": start}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    def invalid(reason: str) -> ApiError:
        return errors.bad_request(f"invalid continue token: continue key is not valid: {reason}")

    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = json.loads(raw)
    except (binascii.Error, ValueError) as error:
        raise invalid(str(error)) from error
    if not isinstance(decoded, dict) or decoded.get("v") != "meta.k8s.io/v1":
        raise invalid("server does not recognize this encoded version")
    version, start = decoded.get("rv"), decoded.get("start")
    if not isinstance(version, int) or version <= 0 or not isinstance(start, str):
        raise invalid("incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
    if start.startswith("/") or ".." in start.split("/"):
        raise invalid("encoded start key is not a relative key")
    return version, start


def _relative_key(stored: dict[str, Any], namespace: str | None) -> str:
    meta = stored["metadata"]
    return meta["name"] if namespace is not None else f"{meta['namespace']}/{meta['name']}"


def list_objects(
    store: ObjectStore,
    rt: ResourceType,
    namespace: str | None,
    options: ListOptions,
    too_large_wait: float,
) -> dict[str, Any]:
    """The list response body (``...List`` with ``metadata`` and ``items``)."""
    start = ""
    at: int | None = None
    if options.continue_token:
        if options.resource_version not in {"", "0"}:
            raise errors.bad_request(
                "specifying resource version is not allowed when using continue"
            )
        at, start = decode_continue(options.continue_token)
    elif options.resource_version not in {"", "0"}:
        wanted = parse_version(options.resource_version)
        if wanted > store.resource_version and not store.wait_for_version(wanted, too_large_wait):
            raise errors.too_large_resource_version(wanted, store.resource_version)
        if options.resource_version_match == "Exact":
            at = wanted
    try:
        items, version = store.snapshot(rt.storage, namespace, at)
    except TooOldError as error:
        if options.continue_token:
            expired = errors.expired(CONTINUE_TOO_OLD)
            expired.list_meta = {"continue": encode_continue(store.resource_version, start)}
            raise expired from error
        raise errors.expired("The resourceVersion for the provided list is too old.") from error
    matches = matcher(namespace, options)
    chosen = [item for item in items if _relative_key(item, namespace) >= start and matches(item)]
    meta: dict[str, Any] = {"resourceVersion": str(version)}
    if options.limit and len(chosen) > options.limit:
        rest = chosen[options.limit :]
        chosen = chosen[: options.limit]
        meta["continue"] = encode_continue(version, _relative_key(chosen[-1], namespace) + "\0")
        if options.labels.empty and options.fields.empty:
            meta["remainingItemCount"] = len(rest)
    views = []
    for item in chosen:
        view = rt.to_view(item)
        view.pop("apiVersion", None)
        view.pop("kind", None)
        views.append(view)
    return {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta, "items": views}
