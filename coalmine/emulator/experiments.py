"""``GET /api/public/experiments`` and ``GET /api/public/experiment-items``: experiments
and their items as a Langfuse v4 server serves them, derived from the experiment
attributes of ingested spans (``experiment_spans.py``).

- An experiment item is the span whose id is its ``item.root_observation_id``: its
  trace, times, level and environment are that observation's; ``experimentItemId`` is
  the dataset item id for dataset experiments.
- An experiment is the group of spans with one experiment id, inside the requested
  time range (``fromStartTime`` required, ``toStartTime`` exclusive): ``startTime``
  and ``endTime`` are the earliest start and latest end there, ``itemCount`` its items.
- Experiments are ordered by latest activity, items by start time, both newest first,
  with a keyset cursor (base64url JSON, ``v: 1``); ``limit`` 1..100, default 50.
- ``fields=scores``: on an experiment, the scores attached to it (``datasetRunId``);
  on an item, the scores of its root observation and of its trace as a whole, within
  a day of the page's items; at most ``scoreLimit`` (1..50) each.
- Filters: comma lists of ids, names and dataset ids, and ``filter``, a JSON list of
  ``{column, operator: "any of"|"none of"|"=", value}`` on the same columns.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request

from coalmine.emulator.auth import require_project
from coalmine.emulator.errors import bad_request, invalid, issue
from coalmine.emulator.paging import positive_int
from coalmine.emulator.scores import score_v3
from coalmine.emulator.settings import EmulatorSettings
from coalmine.emulator.store import Store
from coalmine.emulator.wire import format_ms, parse_time_ms

router = APIRouter(dependencies=[Depends(require_project)])

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
MAX_SCORE_LIMIT = 50
DAY_MS = 86_400_000
EXPERIMENT_FIELDS = ("core", "metadata", "scores")
ITEM_FIELDS = ("core", "dataset", "io", "metadata", "itemMetadata", "experimentMetadata", "scores")
DEFAULT_ITEM_FIELDS = ("core", "dataset")
SCORE_FIELD_GROUPS = ["core", "details", "subject"]

_SPANS = (
    "SELECT e.*, o.start_ms, o.end_ms, o.start_time, o.end_time, o.level, o.environment, "
    "o.input, o.output, o.metadata AS observation_metadata "
    "FROM experiment_spans e JOIN observations o ON o.id = e.span_id "
    "WHERE o.start_ms >= ? AND o.start_ms < ?"
)
_FAR_FUTURE_MS = 1 << 62


@dataclass(frozen=True)
class Query:
    """A checked list request of either route."""

    fields: tuple[str, ...]
    limit: int
    score_limit: int
    cursor: tuple[int, str] | None
    from_ms: int
    to_ms: int
    filters: dict[str, tuple[bool, list[str]]]
    """Column: (keep matches, values); ``none of`` keeps the rest."""


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _time(params: Mapping[str, str], key: str, problems: list[dict[str, Any]]) -> int | None:
    text = params.get(key)
    if text is None:
        return None
    parsed = parse_time_ms(text, strict=True)
    if parsed is None:
        problems.append(issue("invalid_format", [key], "Invalid ISO datetime"))
    return parsed


def _decode_cursor(text: str) -> tuple[int, str]:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        position = parse_time_ms(decoded["lastTime"]) if isinstance(decoded, dict) else None
        last_id = decoded.get("lastId") if isinstance(decoded, dict) else None
    except (binascii.Error, ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise bad_request("Invalid cursor format") from None
    if decoded.get("v") != 1 or position is None or not isinstance(last_id, str):
        raise bad_request("Invalid cursor format")
    return position, last_id


def _encode_cursor(position_ms: int, last_id: str) -> str:
    body = json.dumps({"v": 1, "lastTime": format_ms(position_ms), "lastId": last_id})
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def _filter_conditions(
    text: str, columns: Sequence[str], problems: list[dict[str, Any]]
) -> dict[str, tuple[bool, list[str]]]:
    try:
        entries = json.loads(text)
    except ValueError:
        problems.append(issue("custom", ["filter"], "Invalid filter: not JSON"))
        return {}
    if not isinstance(entries, list):
        problems.append(issue("custom", ["filter"], "Invalid filter: expected an array"))
        return {}
    conditions: dict[str, tuple[bool, list[str]]] = {}
    for entry in entries:
        column = entry.get("column") if isinstance(entry, dict) else None
        operator = entry.get("operator") if isinstance(entry, dict) else None
        value = entry.get("value") if isinstance(entry, dict) else None
        if column not in columns:
            problems.append(
                issue(
                    "custom",
                    ["filter"],
                    f"Invalid filter column: {column}. Supported: {', '.join(columns)}",
                )
            )
            continue
        values = [value] if isinstance(value, str) else value
        if operator not in ("any of", "none of", "=") or not isinstance(values, list):
            problems.append(
                issue("custom", ["filter"], f"Invalid filter on {column}: {operator!r}")
            )
            continue
        conditions[str(column)] = (operator != "none of", [str(v) for v in values])
    return conditions


def parse_query(
    params: Mapping[str, str],
    *,
    allowed_fields: Sequence[str],
    default_fields: Sequence[str],
    list_params: Mapping[str, str],
) -> Query:
    """Check a request of either route; ``list_params`` maps comma-list parameters to
    the filter columns they set."""
    problems: list[dict[str, Any]] = []
    fields = _csv(params.get("fields") or "") or list(default_fields)
    problems.extend(
        issue(
            "invalid_value",
            ["fields"],
            "Invalid option: expected one of " + "|".join(f'"{g}"' for g in allowed_fields),
        )
        for group in fields
        if group not in allowed_fields
    )
    limit = positive_int(params, "limit", problems, MAX_LIMIT)
    score_limit = positive_int(params, "scoreLimit", problems, MAX_SCORE_LIMIT)
    from_ms = _time(params, "fromStartTime", problems)
    if "fromStartTime" not in params:
        problems.append(
            issue(
                "invalid_type",
                ["fromStartTime"],
                "Invalid input: expected string, received undefined",
            )
        )
    to_ms = _time(params, "toStartTime", problems)
    filters = {
        column: (True, _csv(params[key])) for key, column in list_params.items() if params.get(key)
    }
    if params.get("filter"):
        filters.update(_filter_conditions(params["filter"], list(list_params.values()), problems))
    if problems:
        raise invalid(problems)
    cursor = _decode_cursor(params["cursor"]) if params.get("cursor") else None
    return Query(
        fields=tuple(fields),
        limit=limit or DEFAULT_LIMIT,
        score_limit=score_limit or MAX_SCORE_LIMIT,
        cursor=cursor,
        from_ms=from_ms or 0,
        to_ms=_FAR_FUTURE_MS if to_ms is None else to_ms,
        filters=filters,
    )


def _matches(row: sqlite3.Row, filters: Mapping[str, tuple[bool, list[str]]]) -> bool:
    return all((row[column] in values) == keep for column, (keep, values) in filters.items())


def _json_or_text(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _object(text: str | None) -> dict[str, Any] | None:
    value = _json_or_text(text)
    if value is None:
        return None
    return value if isinstance(value, dict) else {"value": value}


def _after_cursor(position: int, row_id: str, cursor: tuple[int, str] | None) -> bool:
    return cursor is None or (position, row_id) < cursor


def spans_in_range(store: Store, from_ms: int, to_ms: int) -> list[sqlite3.Row]:
    """Experiment spans (with their observation's fields) started in [from, to)."""
    return store.query(_SPANS, [from_ms, to_ms])


# --- experiments ---------------------------------------------------------------------

_EXPERIMENT_PARAMS = {"id": "experiment_id", "name": "experiment_name", "datasetId": "dataset_id"}


@dataclass
class Experiment:
    """An experiment's summary over the spans in range."""

    id: str
    name: str
    description: str | None
    metadata: str | None
    dataset_id: str | None
    start_ms: int
    end_ms: int
    activity_ms: int
    item_count: int


def summarise(rows: Sequence[sqlite3.Row]) -> list[Experiment]:
    """One summary per experiment id; the newest span's name and description win."""
    found: dict[str, Experiment] = {}
    for row in sorted(rows, key=lambda r: (r["ingested_ms"], r["start_ms"])):
        end = row["end_ms"] if row["end_ms"] is not None else row["start_ms"]
        is_item = row["span_id"] == row["root_observation_id"]
        known = found.get(row["experiment_id"])
        if known is None:
            found[row["experiment_id"]] = Experiment(
                id=row["experiment_id"],
                name=row["experiment_name"],
                description=row["description"],
                metadata=row["metadata"],
                dataset_id=row["dataset_id"],
                start_ms=row["start_ms"],
                end_ms=end,
                activity_ms=max(row["start_ms"], end),
                item_count=int(is_item),
            )
            continue
        known.name = row["experiment_name"]
        known.description = row["description"] or known.description
        known.metadata = row["metadata"] or known.metadata
        known.dataset_id = row["dataset_id"] or known.dataset_id
        known.start_ms = min(known.start_ms, row["start_ms"])
        known.end_ms = max(known.end_ms, end)
        known.activity_ms = max(known.activity_ms, row["start_ms"], end)
        known.item_count += int(is_item)
    return list(found.values())


def _run_scores(
    store: Store, experiment_ids: list[str], limit: int, project_id: str
) -> dict[str, list[dict[str, Any]]]:
    if not experiment_ids:
        return {}
    rows = store.query(
        f"SELECT * FROM scores WHERE dataset_run_id IN ({', '.join('?' * len(experiment_ids))}) "
        "ORDER BY timestamp_ms DESC, id DESC",
        experiment_ids,
    )
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        bucket = grouped.setdefault(row["dataset_run_id"], [])
        if len(bucket) < limit:
            bucket.append(score_v3(row, SCORE_FIELD_GROUPS, project_id))
    return grouped


@router.get("/api/public/experiments")
def list_experiments(request: Request) -> dict[str, Any]:
    """Experiments with activity in the time range, latest activity first."""
    store: Store = request.app.state.store
    settings: EmulatorSettings = request.app.state.settings
    query = parse_query(
        request.query_params,
        allowed_fields=EXPERIMENT_FIELDS,
        default_fields=("core",),
        list_params=_EXPERIMENT_PARAMS,
    )
    rows = [
        row
        for row in spans_in_range(store, query.from_ms, query.to_ms)
        if _matches(row, query.filters)
    ]
    experiments = sorted(summarise(rows), key=lambda e: (e.activity_ms, e.id), reverse=True)
    experiments = [e for e in experiments if _after_cursor(e.activity_ms, e.id, query.cursor)]
    page = experiments[: query.limit]
    scores = (
        _run_scores(store, [e.id for e in page], query.score_limit, settings.project_id)
        if "scores" in query.fields
        else {}
    )
    data = []
    for experiment in page:
        entry: dict[str, Any] = {
            "id": experiment.id,
            "name": experiment.name,
            "description": experiment.description,
            "startTime": format_ms(max(experiment.start_ms, query.from_ms)),
            "endTime": format_ms(experiment.end_ms),
            "itemCount": experiment.item_count,
            "datasetId": experiment.dataset_id,
        }
        if "metadata" in query.fields:
            entry["metadata"] = _object(experiment.metadata)
        if "scores" in query.fields:
            entry["scores"] = scores.get(experiment.id, [])
        data.append(entry)
    meta: dict[str, Any] = {}
    if len(experiments) > query.limit:
        meta["cursor"] = _encode_cursor(page[-1].activity_ms, page[-1].id)
    return {"data": data, "meta": meta}


# --- experiment items ----------------------------------------------------------------

_ITEM_PARAMS = {
    "experimentId": "experiment_id",
    "experimentName": "experiment_name",
    "experimentItemId": "item_id",
    "datasetId": "dataset_id",
}


def item_rows(store: Store, from_ms: int, to_ms: int) -> list[sqlite3.Row]:
    """The experiment items (root observations) started in [from, to), newest first."""
    rows = [
        r for r in spans_in_range(store, from_ms, to_ms) if r["span_id"] == r["root_observation_id"]
    ]
    return sorted(rows, key=lambda r: (r["start_ms"], r["span_id"]), reverse=True)


def _item_scores(
    store: Store, page: Sequence[sqlite3.Row], limit: int, project_id: str
) -> dict[str, list[dict[str, Any]]]:
    """Scores of each item's root observation and of its trace, within a day of the
    page's items."""
    if not page:
        return {}
    traces = sorted({row["trace_id"] for row in page})
    low = min(row["start_ms"] for row in page) - DAY_MS
    high = max(row["end_ms"] or row["start_ms"] for row in page) + DAY_MS
    rows = store.query(
        f"SELECT * FROM scores WHERE trace_id IN ({', '.join('?' * len(traces))}) "
        "AND timestamp_ms BETWEEN ? AND ? ORDER BY timestamp_ms DESC, id DESC",
        [*traces, low, high],
    )
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in page:
        picked = [
            score_v3(row, SCORE_FIELD_GROUPS, project_id)
            for row in rows
            if row["trace_id"] == item["trace_id"]
            and row["observation_id"] in (None, item["span_id"])
        ]
        grouped[item["span_id"]] = picked[:limit]
    return grouped


_GROUPS: dict[str, Callable[[sqlite3.Row], dict[str, Any]]] = {
    "dataset": lambda row: {
        "experimentDatasetId": row["dataset_id"],
        "experimentItemVersion": row["item_version"],
    },
    "io": lambda row: {
        "input": _json_or_text(row["input"]),
        "output": _json_or_text(row["output"]),
        "expectedOutput": _json_or_text(row["item_expected_output"]),
    },
    "metadata": lambda row: {"metadata": _object(row["observation_metadata"])},
    "itemMetadata": lambda row: {"experimentItemMetadata": _object(row["item_metadata"])},
    "experimentMetadata": lambda row: {
        "experimentMetadata": _object(row["metadata"]),
        "experimentDescription": row["description"],
    },
}


def item_json(row: sqlite3.Row, fields: Sequence[str]) -> dict[str, Any]:
    """An experiment item row as ``ExperimentItem`` with the requested groups."""
    entry: dict[str, Any] = {
        "id": row["span_id"],
        "traceId": row["trace_id"],
        "startTime": row["start_time"],
        "endTime": row["end_time"],
        "level": row["level"],
        "environment": row["environment"],
        "experimentId": row["experiment_id"],
        "experimentName": row["experiment_name"],
        "experimentItemId": row["item_id"],
    }
    for group, render in _GROUPS.items():
        if group in fields:
            entry.update(render(row))
    return entry


@router.get("/api/public/experiment-items")
def list_experiment_items(request: Request) -> dict[str, Any]:
    """Experiment items started in the time range, newest first."""
    store: Store = request.app.state.store
    settings: EmulatorSettings = request.app.state.settings
    query = parse_query(
        request.query_params,
        allowed_fields=ITEM_FIELDS,
        default_fields=DEFAULT_ITEM_FIELDS,
        list_params=_ITEM_PARAMS,
    )
    rows = [
        row
        for row in item_rows(store, query.from_ms, query.to_ms)
        if _matches(row, query.filters)
        and _after_cursor(row["start_ms"], row["span_id"], query.cursor)
    ]
    page = rows[: query.limit]
    scores = (
        _item_scores(store, page, query.score_limit, settings.project_id)
        if "scores" in query.fields
        else {}
    )
    data = []
    for row in page:
        entry = item_json(row, query.fields)
        if "scores" in query.fields:
            entry["scores"] = scores.get(row["span_id"], [])
        data.append(entry)
    meta: dict[str, Any] = {}
    if len(rows) > query.limit:
        meta["cursor"] = _encode_cursor(page[-1]["start_ms"], page[-1]["span_id"])
    return {"data": data, "meta": meta}
