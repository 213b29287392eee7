"""Metrics v2: ``GET /api/public/v2/metrics?query=<JSON>``.

Follows ``web/src/pages/api/public/v2/metrics.ts`` and the query engine in
``packages/shared/src/features/query`` (``dataModel.ts`` v2 views, ``queryBuilder.ts``,
``validateQuery.ts``). Instead of ClickHouse SQL, the common observation queries are
compiled to SQLite (`coalmine.emulator.metrics_sql`: filters, groups, counts, sums,
extremes), and the rest is computed in Python over the rows loaded from the store
(`coalmine.emulator.metrics_python`); both paths give the same rows. The views and the
query are in `coalmine.emulator.metrics_model`, its checks in
`coalmine.emulator.metrics_query`; this module answers the route: it orders, fills, cuts
and types the grouped rows.

Views:

- ``observations``: one row per observation (the events table in Langfuse v4). Trace
  fields (``tags``, ``release``, ``traceName``...) are the ones sent on each span.
- ``scores-numeric`` (NUMERIC and BOOLEAN scores), ``scores-boolean`` and
  ``scores-categorical``. Trace dimensions (``tags``, ``traceName``, ``traceRelease``,
  ``traceVersion``, ``userId``) come from the trace's root observation (no parent), and
  observation dimensions (``observationName``, ``observationPromptName``...) from the
  observation a score names. Like Langfuse's INNER JOINs, a query that uses a trace
  (observation) dimension, in a grouping or a filter, keeps only the scores whose root
  (scored observation) started inside the query's window.

As in Langfuse:

- The window is ``fromTimestamp <= time <= toTimestamp`` (both ends inclusive) on the
  observation's start time or the score's timestamp; ``fromTimestamp < toTimestamp`` is
  required.
- ``tags`` is grouped as a whole array, not exploded: a span tagged ``["a", "b"]`` forms
  the group ``["a", "b"]``, not ``["a"]`` and ``["b"]``. Filter it with
  ``arrayOptions`` (``any of``, ``none of``, ``all of``).
- Result keys are ``{aggregation}_{measure}`` (``count_count``, ``p95_latency``) and
  ``time_dimension`` for the time bucket.
- Without ``orderBy`` rows come by time bucket, else by the first metric descending,
  else by the first dimension; time series without ``orderBy`` have their empty buckets
  filled (ClickHouse ``WITH FILL``). ``config.row_limit`` (default 100) cuts the rows.
- ``id``, ``traceId``, ``userId``, ``sessionId`` and other high-cardinality dimensions
  need ``config.row_limit`` and a descending ``orderBy`` on a metric, and no time
  dimension.
- Numbers are typed the way ClickHouse's JSON output types them: counts (``count``,
  ``uniq``) and ``sum``/``min``/``max`` of integer measures (latencies, tokens) are
  64-bit integers and come as strings (``"134"``); averages, percentiles, costs and
  score values are numbers. Aggregates over no values are null.

Differences, by design:

- Percentiles (``p50`` ... ``p99``) are exact: linear interpolation between the closest
  ranks (``(n - 1) * q``, "type 7"). Langfuse uses ClickHouse ``quantile()``, which
  interpolates the same way over a reservoir sample of up to 8192 values: identical up
  to 8192 values per group, approximate (and not deterministic) beyond.
- ``uniq`` counts exactly; ClickHouse ``uniq()`` is approximate above ~65k values.
- ``histogram`` splits [min, max] into ``config.bins`` (default 10) equal-width bins and
  answers ``[lower, upper, count]`` per non-empty bin; ClickHouse ``histogram()`` is an
  adaptive streaming histogram with bins of unequal width.
- ``categoryOptions`` filters need a ``key``, as Langfuse's schema says, and match the
  dimension's value against the listed values (Langfuse compiles them to
  ``hasAny(column, ['key:value'])``, which is meant for score-category arrays).
- Time buckets are written ``2026-10-01T10:00:00Z`` (minute, hour) and ``2026-10-01``
  (day, week from Monday, month from the 1st). Filled buckets carry ``"0"`` counts and
  nulls elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Depends, Request

from coalmine.emulator import metrics_python, metrics_sql
from coalmine.emulator.auth import require_project
from coalmine.emulator.errors import bad_request, invalid, issue
from coalmine.emulator.metrics_model import (
    TIME_DIMENSION,
    Query,
    bucket_start,
    format_bucket,
    granularity_of,
    next_bucket,
    output_names,
    query_metrics,
)
from coalmine.emulator.metrics_query import parse_query
from coalmine.emulator.store import Store
from coalmine.emulator.wire import parse_json

__all__ = ["parse_query", "router", "run_query"]

router = APIRouter()


def _is_64bit_integer(aggregation: str, measure_type: str) -> bool:
    """ClickHouse types the aggregate UInt64/Int64, which its JSON quotes."""
    return aggregation in ("count", "uniq") or (
        measure_type == "integer" and aggregation in ("sum", "min", "max")
    )


def _order(rows: list[dict[str, Any]], order: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Sort like ClickHouse ``ORDER BY``: NULLs last in either direction, stable."""
    for field_name, direction in reversed(order):
        present = [r for r in rows if r.get(field_name) is not None]
        missing = [r for r in rows if r.get(field_name) is None]
        present.sort(key=lambda r: r[field_name], reverse=direction == "desc")
        rows = present + missing
    return rows


def run_query(store: Store, query: Query, *, sql: bool = True) -> list[dict[str, Any]]:
    """The rows of ``{"data": rows}``.

    Aggregates in SQL where `metrics_sql` can express the query (``sql=True``), in
    Python over the loaded rows otherwise; both give the same rows.
    """
    rows = metrics_sql.grouped_rows(store, query) if sql else None
    if rows is None:
        rows = metrics_python.grouped_rows(store, query)
    return _finish(query, rows)


def _finish(query: Query, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order, fill, cut and type the grouped rows as Langfuse answers them."""
    view = query.view
    granularity = granularity_of(query)
    metrics = query_metrics(query)
    names = output_names(query)
    order = query.order_by
    if not order:
        if granularity:
            order = [(TIME_DIMENSION, "asc")]
        elif query.metrics:
            order = [(names[0], "desc")]
        elif query.dimensions:
            order = [(query.dimensions[0], "asc")]
        else:
            order = []
    rows = _order(rows, order)
    if granularity and not query.order_by:
        rows = _fill(rows, query, granularity, names, metrics)
    rows = rows[: query.row_limit]

    for row in rows:
        if granularity:
            row[TIME_DIMENSION] = format_bucket(row[TIME_DIMENSION], granularity)
        for name, (measure, aggregation) in zip(names, metrics, strict=True):
            spec = view.measures[measure]
            if row[name] is not None and _is_64bit_integer(aggregation, spec.type):
                row[name] = str(row[name])
    return rows


def _fill(
    rows: list[dict[str, Any]],
    query: Query,
    granularity: str,
    names: list[str],
    metrics: list[tuple[str, str]],
) -> list[dict[str, Any]]:
    """ClickHouse ``WITH FILL FROM bucket(from) TO bucket(to)``: a row for each empty
    bucket in between (the end bucket excluded), in time order."""
    present = {row[TIME_DIMENSION] for row in rows}
    end = bucket_start(query.to_ms, granularity)
    cursor = bucket_start(query.from_ms, granularity)
    filled: list[dict[str, Any]] = []
    while cursor < end:
        if cursor not in present:
            row: dict[str, Any] = dict.fromkeys(query.dimensions)
            row[TIME_DIMENSION] = cursor
            for name, (_, aggregation) in zip(names, metrics, strict=True):
                row[name] = 0 if aggregation in ("count", "uniq") else None
                if aggregation == "histogram":
                    row[name] = []
            filled.append(row)
        cursor = next_bucket(cursor, granularity)
    return _order(rows + filled, [(TIME_DIMENSION, "asc")])


@router.get("/api/public/v2/metrics", dependencies=[Depends(require_project)])
def metrics(request: Request) -> dict[str, Any]:
    """Aggregates over observations or scores, grouped by dimensions and time."""
    texts = request.query_params.getlist("query")
    if len(texts) != 1:
        expected = "received undefined" if not texts else "received array"
        raise invalid(
            [issue("invalid_type", ["query"], f"Invalid input: expected string, {expected}")]
        )
    try:
        raw = parse_json(texts[0])
    except ValueError:
        raise bad_request("Invalid JSON in query parameter") from None
    query = parse_query(raw)
    store: Store = request.app.state.store
    return {"data": run_query(store, query)}
