"""Metrics v2 computed in Python: the window's rows loaded from the store, filtered,
grouped and aggregated. It computes every query; `coalmine.emulator.metrics_sql`
computes the common ones in SQLite and must give the same rows.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

from coalmine.emulator.metrics_model import (
    OBSERVATIONS,
    TIME_DIMENSION,
    Dimension,
    Entity,
    Query,
    View,
    bucket_start,
    filter_dimension,
    granularity_of,
    output_names,
    query_metrics,
)
from coalmine.emulator.store import Store
from coalmine.emulator.wire import parse_time_ms

QUANTILES = {"p50": 0.5, "p75": 0.75, "p90": 0.9, "p95": 0.95, "p99": 0.99}

# -------------------------------------------------------------------------- loading

_OBSERVATION_COLUMNS = (
    "id, trace_id, parent_observation_id, type, name, start_ms, end_ms, "
    "completion_start_time, level, version, environment, user_id, session_id, is_root, "
    "tags, release, trace_name, prompt_name, prompt_version, model, usage_details, "
    "cost_details, total_cost, metadata"
)


def json_column(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _load_observations(store: Store, lo: int, hi: int, relations: set[str]) -> list[Entity]:
    rows = store.query(
        f"SELECT {_OBSERVATION_COLUMNS} FROM observations WHERE start_ms >= ? AND start_ms <= ? "
        "ORDER BY start_ms DESC, id DESC",  # index order; groups keep their first appearance
        (lo, hi),
    )
    counts: dict[str, int] = {}
    if "scores" in relations:
        counts = {
            row[0]: row[1]
            for row in store.query(
                "SELECT observation_id, COUNT(DISTINCT id) FROM scores "
                "WHERE observation_id IS NOT NULL AND timestamp_ms >= ? AND timestamp_ms <= ? "
                "GROUP BY observation_id",
                (lo, hi),
            )
        }
    entities = []
    for row in rows:
        e = dict(row)
        if "scores" in relations:
            if e["id"] not in counts:
                continue  # INNER JOIN scores
            e["score_count"] = counts[e["id"]]
        e["tags"] = json_column(e["tags"], [])
        e["usage_details"] = json_column(e["usage_details"], {})
        e["cost_details"] = json_column(e["cost_details"], {})
        e["metadata"] = json_column(e["metadata"], {})
        completion = e.pop("completion_start_time")
        e["completion_start_ms"] = parse_time_ms(completion) if completion else None
        entities.append(e)
    return entities


_SCORES_SQL = """
SELECT s.*,
       r.seq AS r_seq, r.name AS r_name, r.trace_name AS r_trace_name, r.tags AS r_tags,
       r.release AS r_release, r.version AS r_version, r.user_id AS r_user_id,
       o.seq AS o_seq, o.name AS o_name, o.model AS o_model,
       o.prompt_name AS o_prompt_name, o.prompt_version AS o_prompt_version
FROM scores s
LEFT JOIN observations r
       ON r.trace_id = s.trace_id
      AND (r.parent_observation_id IS NULL OR r.parent_observation_id = '')
      AND r.start_ms >= :lo AND r.start_ms <= :hi
LEFT JOIN observations o
       ON o.id = s.observation_id AND o.trace_id = s.trace_id
      AND o.start_ms >= :lo AND o.start_ms <= :hi
WHERE s.timestamp_ms >= :lo AND s.timestamp_ms <= :hi AND s.data_type IN ({types})
ORDER BY s.seq, r.seq
"""


def _load_scores(store: Store, view: View, lo: int, hi: int, relations: set[str]) -> list[Entity]:
    types = ", ".join(f"'{t}'" for t in view.data_types)
    rows = store.query(_SCORES_SQL.format(types=types), {"lo": lo, "hi": hi})
    entities: dict[str, Entity] = {}
    for row in rows:
        if row["id"] in entities:
            continue  # one row per score, like Langfuse's per-id inner query
        if "trace" in relations and row["r_seq"] is None:
            continue
        if "observation" in relations and row["o_seq"] is None:
            continue
        e = dict(row)
        e["r_tags"] = json_column(e["r_tags"], [])
        e["metadata"] = json_column(e["metadata"], {})
        entities[e["id"]] = e
    return list(entities.values())


# ----------------------------------------------------------------------- filtering


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool | list | dict):
        return None
    try:
        return float(value)
    except ValueError:
        return None


_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "=": operator.eq,
    "<>": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


def _compare(left: float, op: str, right: float) -> bool:
    return _COMPARISONS[op](left, right)


def _string_match(text: str, op: str, value: str, *, nullable: bool) -> bool:
    if nullable and value == "" and op != "does not contain":
        return text == ""
    if op == "=":
        return text == value
    if op == "contains":
        return value in text
    if op == "does not contain":
        return value not in text and (not nullable or text != "")
    if op == "starts with":
        return text.startswith(value)
    return text.endswith(value)


Predicate = Callable[[Entity], bool]


def _time_test(view: View, op: str, value: str) -> Predicate:
    bound = parse_time_ms(value)
    assert bound is not None
    key = "start_ms" if view is OBSERVATIONS else "timestamp_ms"
    return lambda e: _compare(e[key], op, bound)


def _metadata_test(key: str, kind: str, op: str, value: Any) -> Predicate:
    def test(e: Entity) -> bool:
        metadata = e["metadata"] if isinstance(e["metadata"], dict) else {}
        if key not in metadata:
            return False
        found = metadata[key]
        if kind == "numberObject":
            number = _number(found)
            return number is not None and _compare(number, op, value)
        text = found if isinstance(found, str) else json.dumps(found)
        return _string_match(text, op, value, nullable=False)

    return test


def _array_test(dimension: Dimension, op: str, value: Any) -> Predicate:
    get, wanted = dimension.get, set(value)
    if op == "any of":
        return lambda e: bool(wanted & set(get(e) or []))
    if op == "none of":
        return lambda e: not wanted & set(get(e) or [])
    return lambda e: wanted <= set(get(e) or [])


def _null_test(dimension: Dimension, op: str, _value: Any) -> Predicate:
    get, nullable = dimension.get, dimension.nullable

    def is_null(e: Entity) -> bool:
        found = get(e)
        return found is None or (nullable and found == "")

    return is_null if op == "is null" else (lambda e: not is_null(e))


def _boolean_test(dimension: Dimension, op: str, value: Any) -> Predicate:
    get = dimension.get
    return lambda e: get(e) is not None and (bool(get(e)) == value) == (op == "=")


def _number_test(dimension: Dimension, op: str, value: Any) -> Predicate:
    get = dimension.get

    def test(e: Entity) -> bool:
        number = _number(get(e))
        return number is not None and _compare(number, op, value)

    return test


def _options_test(dimension: Dimension, op: str, value: Any) -> Predicate:
    get, nullable, options = dimension.get, dimension.nullable, set(value)
    if op == "any of":
        return lambda e: _text(get(e)) in options
    return lambda e: _text(get(e)) not in options and not (nullable and _text(get(e)) == "")


def _string_test(dimension: Dimension, op: str, value: Any) -> Predicate:
    get, nullable = dimension.get, dimension.nullable
    return lambda e: _string_match(_text(get(e)), op, value, nullable=nullable)


_DIMENSION_TESTS: dict[str, Callable[[Dimension, str, Any], Predicate]] = {
    "arrayOptions": _array_test,
    "null": _null_test,
    "boolean": _boolean_test,
    "number": _number_test,
    "stringOptions": _options_test,
    "categoryOptions": _options_test,
    "string": _string_test,
}
"""The test of a filter on a dimension, by filter type."""


def predicate(view: View, raw: dict[str, Any]) -> Predicate:
    """The test of one checked filter on the view's entities."""
    kind, op, value, column = raw["type"], raw["operator"], raw["value"], raw["column"]
    if column == view.time_column and kind == "datetime":
        return _time_test(view, op, value)
    if column == "metadata" and column not in view.dimensions:
        return _metadata_test(raw["key"], kind, op, value)
    dimension = filter_dimension(view, column)
    assert dimension is not None
    return _DIMENSION_TESTS.get(kind, _string_test)(dimension, op, value)


# ---------------------------------------------------------------------- aggregating


def quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks ("type 7"), as ClickHouse
    ``quantile()`` computes it over its sample (all values, up to 8192)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def histogram(values: Sequence[float], bins: int) -> list[list[float]]:
    """``[lower, upper, count]`` of equal-width bins over [min, max], empty bins left out."""
    if not values:
        return []
    low, high = min(values), max(values)
    if low == high:
        return [[low, high, float(len(values))]]
    width = (high - low) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - low) / width), bins - 1)] += 1
    return [
        [low + i * width, high if i == bins - 1 else low + (i + 1) * width, float(n)]
        for i, n in enumerate(counts)
        if n
    ]


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def aggregate(aggregation: str, values: Sequence[Any], measure_type: str, bins: int) -> Any:
    """One aggregate, as a raw (sortable) value: counts as int, integer sums as int."""
    present = [v for v in values if v is not None]
    if aggregation == "count":
        return len(present)
    if aggregation == "uniq":
        return len(set(present))
    numbers = [float(v) for v in present]
    if aggregation == "histogram":
        return histogram(numbers, bins)
    if not numbers:
        return None
    integer = measure_type == "integer"
    if aggregation == "sum":
        return int(sum(numbers)) if integer else finite(math.fsum(numbers))
    if aggregation in ("min", "max"):
        found = min(numbers) if aggregation == "min" else max(numbers)
        return int(found) if integer else found
    if aggregation == "avg":
        return finite(math.fsum(numbers) / len(numbers))
    return finite(quantile(numbers, QUANTILES[aggregation]))


def group_key(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def grouped_rows(store: Store, query: Query) -> list[dict[str, Any]]:
    """One row per group, with raw aggregates, in order of each group's first row
    (newest first): loaded, filtered and aggregated in Python."""
    view = query.view
    if view is OBSERVATIONS:
        entities = _load_observations(store, query.from_ms, query.to_ms, query.relations)
        time_key = "start_ms"
    else:
        entities = _load_scores(store, view, query.from_ms, query.to_ms, query.relations)
        time_key = "timestamp_ms"
    predicates = [predicate(view, raw) for raw in query.filters]
    entities = [e for e in entities if all(p(e) for p in predicates)]

    granularity = granularity_of(query)
    metrics = query_metrics(query)
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for e in entities:
        dims = [view.dimensions[d].get(e) for d in query.dimensions]
        bucket = bucket_start(e[time_key], granularity) if granularity else None
        key = (*(group_key(d) for d in dims), bucket)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {"dims": dims, "bucket": bucket, "values": [[] for _ in metrics]}
        for index, (measure, _) in enumerate(metrics):
            group["values"][index].append(view.measures[measure].get(e))
    if not groups and not query.dimensions and not granularity:
        groups[()] = {"dims": [], "bucket": None, "values": [[] for _ in metrics]}

    names = output_names(query)
    rows: list[dict[str, Any]] = []
    for group in groups.values():
        row: dict[str, Any] = dict(zip(query.dimensions, group["dims"], strict=True))
        if granularity:
            row[TIME_DIMENSION] = group["bucket"]
        for name, (measure, aggregation), values in zip(
            names, metrics, group["values"], strict=True
        ):
            spec = view.measures[measure]
            row[name] = aggregate(aggregation, values, spec.type, query.bins)
        rows.append(row)
    return rows
