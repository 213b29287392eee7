"""Metrics v2 filtered, grouped and aggregated in SQLite.

`grouped_rows` answers the queries SQL expresses directly and returns None for the
others, which `coalmine.emulator.metrics_python` then computes over the loaded rows.
Both give the same rows; ``tests/emulator/test_metrics_sql.py`` runs a table of queries
and generated ones through both.

What SQL takes, in the observations view and the score views (scores joined to their
trace's first root span and to the observation they name, as the Python path joins them):

- the window and ``startTime`` / ``timestamp`` filters;
- filters on the dimensions below: ``=``, ``contains``, ``starts with``... on text,
  ``any of`` / ``none of`` options, numbers, booleans, ``is null``;
- ``tags`` filters (``any of``, ``all of``, ``none of``, ``is null``): Python tests the
  filter once per distinct ``tags`` text (few: read off the ``observations_metrics``
  index by a skip scan, one seek per value), and SQL keeps the texts that pass;
- grouping by those dimensions, ``tags`` as its whole JSON text (parsed afterwards), and
  by minute, hour, day or week;
- ``count``, ``uniq``, ``sum``, ``avg``, ``min``, ``max``, percentiles and histograms of
  the measures below.

Counts, minima, maxima and integer sums come from SQL. Percentiles, histograms, ``uniq``
and the sums and averages of REAL measures (costs, score values) go through the Python
path's own `aggregate`, over the group's values: integers and text packed by
``json_group_array`` (exact), REALs read as rows (SQLite prints REALs with 15 digits, so
text would round them; and Python sums them with ``math.fsum``, which SQL's ``SUM``
does not match to the last bit).

Ties: the Python path keeps groups in order of their first row and sorts stably. That
order is newest first (``start_ms DESC, id DESC``) for observations, and ``seq`` for
scores; the SQL path orders its groups the same way from each group's newest
``start_ms`` (and, where two groups share it, newest ``id``) or smallest ``seq``.

Everything else goes to Python: score counts of observations, token and other
JSON-derived measures, metadata filters, ``startTimeMonth`` and the other month
dimensions, month buckets.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from coalmine.emulator.errors import NeedsPythonError
from coalmine.emulator.metrics_model import (
    OBSERVATIONS,
    TIME_DIMENSION,
    Query,
    filter_dimension_name,
    granularity_of,
    output_names,
    query_metrics,
)
from coalmine.emulator.metrics_python import aggregate, finite, group_key, json_column, predicate
from coalmine.emulator.store import Store
from coalmine.emulator.wire import parse_time_ms

INDEX = "observations_metrics"
INDEXED = frozenset(
    {"tags", "level", "start_ms", "is_root", "type", "end_ms", "total_cost", "trace_id"}
)
"""Columns of the covering index ``observations_metrics`` (schema.py)."""


@dataclass(frozen=True)
class Expr:
    """A dimension or measure as a SQL expression over ``observations AS o`` (scores:
    ``scores AS s``, root span ``r``, scored observation ``o``)."""

    sql: str
    columns: frozenset[str] = frozenset()  # observations' columns it reads
    real: bool = False  # REAL values: read as rows, not packed as JSON text


def _expr(sql: str, *columns: str, real: bool = False) -> Expr:
    return Expr(sql, frozenset(columns), real)


def _blank(column: str, table: str = "o") -> Expr:
    """``nullIf(column, '')``, as the Python path's ``_blank``."""
    return _expr(f"NULLIF({table}.{column}, '')", column)


def _text(column: str, table: str = "o") -> Expr:
    """``column or ''``."""
    return _expr(f"COALESCE({table}.{column}, '')", column)


OBSERVATION_DIMENSIONS: dict[str, Expr] = {
    "id": _expr("o.id", "id"),
    "traceId": _expr("o.trace_id", "trace_id"),
    "environment": _blank("environment"),
    "parentObservationId": _blank("parent_observation_id"),
    "type": _expr("o.type", "type"),  # NOT NULL: ``type or ''`` is the column
    "name": _text("name"),
    "level": _expr("o.level", "level"),  # NOT NULL; the column, for the index's order
    "version": _blank("version"),
    "userId": _blank("user_id"),
    "sessionId": _blank("session_id"),
    "tags": _expr("o.tags", "tags"),
    "release": _blank("release"),
    "traceName": _expr(
        "COALESCE(NULLIF(o.trace_name, ''), CASE WHEN o.parent_observation_id IS NULL "
        "OR o.parent_observation_id = '' THEN NULLIF(o.name, '') END)",
        "trace_name",
        "parent_observation_id",
        "name",
    ),
    "traceRelease": _blank("release"),
    "traceVersion": _blank("version"),
    "providedModelName": _blank("model"),
    "promptName": _blank("prompt_name"),
    "promptVersion": _expr("o.prompt_version", "prompt_version"),
    "isRootObservation": _expr("(o.is_root <> 0)", "is_root"),
}

OBSERVATION_MEASURES: dict[str, Expr] = {
    "count": _expr("1"),
    "traceId": _expr("o.trace_id", "trace_id"),
    "uniqueUserIds": _blank("user_id"),
    "uniqueSessionIds": _blank("session_id"),
    "latency": _expr("(o.end_ms - o.start_ms)", "end_ms", "start_ms"),
    "totalCost": _expr("o.total_cost", "total_cost", real=True),
}

SCORE_DIMENSIONS: dict[str, Expr] = {
    "id": _expr("s.id"),
    "environment": _text("environment", "s"),
    "name": _expr("s.name"),
    "source": _expr("s.source"),
    "dataType": _expr("s.data_type"),
    "traceId": _expr("s.trace_id"),
    "observationId": _expr("s.observation_id"),
    "sessionId": _expr("s.session_id"),
    "datasetRunId": _blank("dataset_run_id", "s"),
    "configId": _expr("s.config_id"),
    "traceName": _expr("COALESCE(NULLIF(r.trace_name, ''), NULLIF(r.name, ''))"),
    "userId": _blank("user_id", "r"),
    "tags": _expr("r.tags"),
    "traceRelease": _blank("release", "r"),
    "traceVersion": _blank("version", "r"),
    "observationName": _text("name", "o"),
    "observationModelName": _blank("model", "o"),
    "observationPromptName": _blank("prompt_name", "o"),
    "observationPromptVersion": _expr("o.prompt_version"),
    "value": _expr("s.value"),
    "booleanValue": _expr("COALESCE(s.value = 1, 0)"),  # ``value == 1``: False for NULL
    "stringValue": _text("string_value", "s"),
}

SCORE_MEASURES: dict[str, Expr] = {
    "count": _expr("1"),
    "value": _expr("s.value", real=True),
}

_ROOT_JOIN = """
JOIN observations AS r ON r.seq = (
    SELECT MIN(x.seq) FROM observations AS x
    WHERE x.trace_id = s.trace_id AND (x.parent_observation_id IS NULL
        OR x.parent_observation_id = '') AND x.start_ms >= ? AND x.start_ms <= ?
)"""
"""The trace's first root span in the window (the Python path keeps the first)."""

_OBSERVATION_JOIN = """
JOIN observations AS o ON o.id = s.observation_id AND o.trace_id = s.trace_id
    AND o.start_ms >= ? AND o.start_ms <= ?"""


@dataclass(frozen=True)
class _ViewSql:
    time: str  # the time column
    dimensions: dict[str, Expr]
    measures: dict[str, Expr]
    first: str  # aggregate giving the order of the groups' first rows
    newest_first: bool
    rowid: str | None = None  # scores: REAL values are read by rowid, not by a second join


_OBSERVATIONS_SQL = _ViewSql(
    "o.start_ms", OBSERVATION_DIMENSIONS, OBSERVATION_MEASURES, "MAX(o.start_ms)", True
)
_SCORES_SQL = _ViewSql(
    "s.timestamp_ms", SCORE_DIMENSIONS, SCORE_MEASURES, "MIN(s.seq)", False, rowid="s.seq"
)


def _bucket(granularity: str, time: str) -> str:
    """``bucket_start`` for times >= 0 (SQLite's ``%`` truncates toward zero)."""
    if granularity == "week":  # 1970-01-01 was a Thursday: day d is weekday (d + 3) % 7
        return f"(({time} / 86400000 - ({time} / 86400000 + 3) % 7) * 86400000)"
    step = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}[granularity]
    return f"({time} - {time} % {step})"


GRANULARITIES = ("minute", "hour", "day", "week")

_LIST_AGGREGATIONS = frozenset({"p50", "p75", "p90", "p95", "p99", "histogram"})

_DISTINCT_TAGS = """
WITH RECURSIVE d(v) AS (
    SELECT MIN(tags) FROM observations
    UNION ALL
    SELECT (SELECT MIN(tags) FROM observations WHERE tags > d.v) FROM d WHERE d.v IS NOT NULL
)
SELECT v FROM d WHERE v IS NOT NULL
"""
"""Every distinct ``tags`` text, one index seek each (a skip scan of ``observations_metrics``)."""

Condition = tuple[str, list[Any]]


# ------------------------------------------------------------------------- filters


def _options_sql(sql: str, operator: str, values: Sequence[str], nullable: bool) -> Condition:
    marks = ", ".join("?" * len(values))
    if operator == "any of":
        return f"{sql} IN ({marks})", list(values)
    empty = f" AND {sql} <> ''" if nullable else ""
    return f"({sql} NOT IN ({marks}){empty})", list(values)


def _string_sql(sql: str, operator: str, value: str, nullable: bool) -> Condition:
    """``_string_match`` over ``sql`` (text, never NULL)."""
    if nullable and value == "" and operator != "does not contain":
        return f"{sql} = ''", []
    if operator == "=":
        return f"{sql} = ?", [value]
    if operator == "contains":
        return f"instr({sql}, ?) > 0", [value]
    if operator == "does not contain":
        empty = f" AND {sql} <> ''" if nullable else ""
        return f"(instr({sql}, ?) = 0{empty})", [value]
    if operator == "starts with":
        return f"instr({sql}, ?) = 1", [value]
    if value == "":  # ends with: every text ends with ""
        return "1", []
    return f"substr({sql}, ?) = ?", [-len(value), value]  # SQLite counts characters too


def _condition(query: Query, spec: _ViewSql, raw: dict[str, Any]) -> Condition:
    """One filter as SQL, as the Python path's `predicate` tests it; raises
    `NeedsPythonError` for those only Python applies."""
    view = query.view
    kind, operator, value, column = raw["type"], raw["operator"], raw["value"], raw["column"]
    if column == view.time_column and kind == "datetime":
        return f"{spec.time} {operator} ?", [parse_time_ms(value)]
    name = filter_dimension_name(view, column)
    if name is None or name not in spec.dimensions:
        raise NeedsPythonError  # metadata
    dimension = view.dimensions[name]
    expr = spec.dimensions[name].sql
    nullable = dimension.nullable
    if kind == "null":
        empty = f" OR {expr} = ''" if nullable else ""
        test = f"({expr} IS NULL{empty})"
        return (test if operator == "is null" else f"NOT {test}"), []
    if dimension.kind == "boolean" and kind == "boolean":
        wanted = value if operator == "=" else not value
        return f"{expr} = ?", [int(bool(wanted))]
    if dimension.kind == "number" and kind == "number":
        return f"({expr} IS NOT NULL AND {expr} {operator} ?)", [value]
    if dimension.kind == "string":
        text = f"COALESCE({expr}, '')"
        if kind in ("stringOptions", "categoryOptions"):
            return _options_sql(text, operator, value, nullable)
        if kind == "string":
            return _string_sql(text, operator, value, nullable)
    raise NeedsPythonError


def _tags_condition(
    db: sqlite3.Connection, column: str, tests: list[Callable[[dict[str, Any]], bool]]
) -> Condition:
    """The ``tags`` texts that pass every tags filter, tested once each in Python."""
    passing = [
        text
        for (text,) in db.execute(_DISTINCT_TAGS)
        if all(
            test({"tags": json_column(text, []), "r_tags": json_column(text, [])}) for test in tests
        )
    ]
    return f"{column} IN (SELECT value FROM json_each(?))", [json.dumps(passing)]


# ------------------------------------------------------------------------- the query


@dataclass
class _Select:
    """SELECT columns, deduplicated."""

    columns: list[str]

    def add(self, sql: str) -> int:
        if sql not in self.columns:
            self.columns.append(sql)
        return self.columns.index(sql)


@dataclass(frozen=True)
class _Scan:
    """What a query reads: FROM, WHERE and GROUP BY; for its follow-up queries too."""

    source: str  # FROM
    condition: str  # WHERE
    params: list[Any]
    groups: list[str]  # GROUP BY expressions


def grouped_rows(store: Store, query: Query) -> list[dict[str, Any]] | None:
    """The rows the Python path's grouping gives (raw aggregates, groups in order of
    first appearance), computed in SQL; None if the query needs the Python path."""
    try:
        return _grouped_rows(store, query)
    except NeedsPythonError:
        return None
    except sqlite3.OperationalError as error:
        if "overflow" in str(error):  # an integer SUM beyond 64 bits
            return None
        raise


def _source(query: Query, spec: _ViewSql, columns: set[str]) -> tuple[str, list[str], list[Any]]:
    """FROM clause, the window's conditions and their parameters."""
    window = [query.from_ms, query.to_ms]
    where = [f"{spec.time} >= ?", f"{spec.time} <= ?"]
    if spec is _OBSERVATIONS_SQL:
        if query.relations:  # score counts
            raise NeedsPythonError
        if columns <= INDEXED:  # the covering index alone, in (tags, level) order
            return f"observations AS o INDEXED BY {INDEX}", where, window
        return "observations AS o", where, window
    source, params = "scores AS s", []
    if "trace" in query.relations:
        source += _ROOT_JOIN
        params += window
    if "observation" in query.relations:
        source += _OBSERVATION_JOIN
        params += window
    types = query.view.data_types
    where.append(f"s.data_type IN ({', '.join('?' * len(types))})")
    return source, where, [*params, *window, *types]


@dataclass
class _Filters:
    """The query's filters as SQL, but for ``tags`` filters, tested in Python against
    each distinct ``tags`` text once the database is open."""

    conditions: list[str]
    params: list[Any]
    tag_tests: list[Callable[[dict[str, Any]], bool]]
    columns: set[str]  # observations' columns the filters read


def _check_expressible(
    query: Query, spec: _ViewSql, granularity: str | None, metrics: list[tuple[str, str]]
) -> None:
    """Raises `NeedsPythonError` for a time bucket, measure or dimension SQL lacks."""
    if granularity is not None and (granularity not in GRANULARITIES or query.from_ms < 0):
        raise NeedsPythonError
    if any(measure not in spec.measures for measure, _ in metrics):
        raise NeedsPythonError
    if any(d not in spec.dimensions for d in query.dimensions):
        raise NeedsPythonError


def _filters(query: Query, spec: _ViewSql) -> _Filters:
    filters = _Filters([], [], [], {"start_ms"})
    for raw in query.filters:
        name = filter_dimension_name(query.view, raw["column"])
        if name == "tags":
            filters.tag_tests.append(predicate(query.view, raw))
            filters.columns.add("tags")
            continue
        sql, values = _condition(query, spec, raw)
        filters.conditions.append(sql)
        filters.params.extend(values)
        if name is not None:
            filters.columns |= spec.dimensions[name].columns
    return filters


def _grouped_rows(store: Store, query: Query) -> list[dict[str, Any]]:
    spec = _OBSERVATIONS_SQL if query.view is OBSERVATIONS else _SCORES_SQL
    granularity = granularity_of(query)
    metrics = query_metrics(query)
    _check_expressible(query, spec, granularity, metrics)
    filters = _filters(query, spec)
    columns = filters.columns | {c for d in query.dimensions for c in spec.dimensions[d].columns}
    columns |= {c for m, _ in metrics for c in spec.measures[m].columns}
    source, where, source_params = _source(query, spec, columns)

    groups = [spec.dimensions[d].sql for d in query.dimensions]
    if granularity is not None:
        groups.append(_bucket(granularity, spec.time))
    select = _Select(list(groups))
    first = select.add(spec.first)
    plans = [_plan(select, spec, measure, aggregation) for measure, aggregation in metrics]
    rowids = None
    if spec.rowid is not None and any(p.real is not None for p in plans):
        rowids = select.add(f"json_group_array({spec.rowid})")
    grouping = f" GROUP BY {', '.join(str(i + 1) for i in range(len(groups)))}" if groups else ""

    with store.transaction() as db:
        if filters.tag_tests:
            sql, values = _tags_condition(db, spec.dimensions["tags"].sql, filters.tag_tests)
            filters.conditions.append(sql)
            filters.params.extend(values)
        scan = _Scan(
            source,
            " AND ".join(where + filters.conditions),
            source_params + filters.params,
            groups,
        )
        found = db.execute(
            f"SELECT {', '.join(select.columns)} FROM {scan.source} "
            f"WHERE {scan.condition}{grouping}",
            scan.params,
        ).fetchall()
        keys = [tuple(row[: len(groups)]) for row in found]
        reals = _real_values(db, scan, found, plans, rowids)
        if spec.newest_first:
            order = _newest_first(db, scan, found, keys, first)
        else:
            order = sorted(range(len(found)), key=lambda i: found[i][first])
    return _rows(query, granularity, found, keys, order, plans, reals)


def _rows(
    query: Query,
    granularity: str | None,
    found: list[sqlite3.Row],
    keys: list[tuple[Any, ...]],
    order: list[int],
    plans: list[_Plan],
    reals: dict[tuple[Any, ...], list[float]],
) -> list[dict[str, Any]]:
    """The groups as the Python path gives them: dimensions, time bucket and raw
    aggregates, in ``order``."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    metrics = query_metrics(query)
    for index in order:
        key = keys[index]
        row = {
            dimension: _dimension_value(query, dimension, key[position])
            for position, dimension in enumerate(query.dimensions)
        }
        bucket = key[-1] if granularity is not None else None
        python_key = (*(group_key(row[d]) for d in query.dimensions), bucket)
        if python_key in seen:  # two texts of one tags list: Python would merge them
            raise NeedsPythonError
        seen.add(python_key)
        if granularity is not None:
            row[TIME_DIMENSION] = bucket
        for name, (measure, _), compute in zip(output_names(query), metrics, plans, strict=True):
            kind = query.view.measures[measure].type
            row[name] = compute(found[index], reals.get(key, []), kind, query.bins)
        rows.append(row)
    return rows


def _dimension_value(query: Query, dimension: str, value: Any) -> Any:
    kind = query.view.dimensions[dimension].kind
    if kind == "array":
        return json_column(value, [])
    if kind == "boolean":
        return bool(value)
    return value


Compute = Callable[[Sequence[Any], list[float], str, int], Any]


@dataclass(frozen=True)
class _Plan:
    """How one metric is computed from a result row (and the group's REAL values)."""

    compute: Compute
    real: str | None  # the REAL measure whose values it needs, read as rows
    count_column: int  # COUNT(measure): whether there are any

    def __call__(self, row: Sequence[Any], reals: list[float], kind: str, bins: int) -> Any:
        return self.compute(row, reals, kind, bins)


def _plan(select: _Select, spec: _ViewSql, measure: str, aggregation: str) -> _Plan:
    """How one metric is computed, with the columns it adds to ``select``."""
    expr = spec.measures[measure]
    count = select.add(f"COUNT({expr.sql})")
    if aggregation == "count":
        return _Plan(_column(count), None, count)
    if aggregation in ("min", "max"):
        return _Plan(_extreme(select.add(f"{aggregation.upper()}({expr.sql})")), None, count)
    if expr.real:
        if aggregation == "uniq":
            return _Plan(_column(select.add(f"COUNT(DISTINCT {expr.sql})")), None, count)
        return _Plan(_from_values(aggregation), expr.sql, count)
    if aggregation in ("sum", "avg"):  # integer measures: SQL sums are exact
        return _Plan(_summed(select.add(f"SUM({expr.sql})"), count, aggregation), None, count)
    assert aggregation in _LIST_AGGREGATIONS or aggregation == "uniq"
    return _Plan(_listed(select.add(f"json_group_array({expr.sql})"), aggregation), None, count)


def _column(index: int) -> Compute:
    """The value of a result column as it is."""
    return lambda row, _r, _k, _b: row[index]


def _extreme(index: int) -> Compute:
    """A MIN or MAX column; an integer for an integer measure."""

    def extreme(row: Sequence[Any], _r: list[float], kind: str, _b: int) -> Any:
        found = row[index]
        return found if found is None or kind != "integer" else int(found)

    return extreme


def _from_values(aggregation: str) -> Compute:
    """The Python path's aggregate over the group's REAL values, read as rows."""

    def from_values(_row: Sequence[Any], reals: list[float], kind: str, bins: int) -> Any:
        return aggregate(aggregation, reals, kind, bins)

    return from_values


def _summed(total: int, count: int, aggregation: str) -> Compute:
    """The sum, or the average, of an integer measure from its SUM and COUNT columns."""

    def summed(row: Sequence[Any], _r: list[float], _k: str, _b: int) -> Any:
        if row[total] is None:
            return None
        if aggregation == "sum":
            return int(row[total])
        return finite(float(row[total]) / row[count])

    return summed


def _listed(packed: int, aggregation: str) -> Compute:
    """The Python path's aggregate over the values packed by ``json_group_array``."""

    def listed(row: Sequence[Any], _r: list[float], kind: str, bins: int) -> Any:
        return aggregate(aggregation, json.loads(row[packed]), kind, bins)

    return listed


def _real_values(
    db: sqlite3.Connection,
    scan: _Scan,
    found: list[sqlite3.Row],
    plans: list[_Plan],
    rowids: int | None,
) -> dict[tuple[Any, ...], list[float]]:
    """The non-null values of the view's REAL measure per group, if a metric needs them
    (each view has one REAL measure at most): read again with the query's condition
    (observations: from the covering index), or by the rowids of each group (scores:
    their joins are the expensive part)."""
    wanted = [p for p in plans if p.real is not None]
    if not wanted or not any(row[p.count_column] for row in found for p in wanted):
        return {}
    measure = str(wanted[0].real)
    width = len(scan.groups)
    values: dict[tuple[Any, ...], list[float]] = {}
    if rowids is not None:  # scores
        for row in found:
            values[tuple(row[:width])] = [
                value
                for (value,) in db.execute(
                    f"SELECT {measure} FROM scores AS s WHERE s.seq IN "
                    f"(SELECT value FROM json_each(?)) AND {measure} IS NOT NULL",
                    [row[rowids]],
                )
            ]
        return values
    rows = db.execute(
        f"SELECT {', '.join([*scan.groups, measure])} FROM {scan.source} "
        f"WHERE {scan.condition} AND {measure} IS NOT NULL",
        scan.params,
    )
    for row in rows:
        values.setdefault(tuple(row[:width]), []).append(row[width])
    return values


def _newest_first(
    db: sqlite3.Connection,
    scan: _Scan,
    found: list[sqlite3.Row],
    keys: list[tuple[Any, ...]],
    first: int,
) -> list[int]:
    """Indexes of ``found`` in the order the groups' first rows come in Python's scan
    of observations (``start_ms DESC, id DESC``)."""
    if len(found) < 2:
        return list(range(len(found)))
    newest = [row[first] for row in found]
    counts: dict[int, int] = {}
    for ms in newest:
        counts[ms] = counts.get(ms, 0) + 1
    shared = [ms for ms, n in counts.items() if n > 1]
    ids: dict[tuple[Any, ...], str] = {}
    if shared:  # groups whose newest rows share a start time: the newest id decides
        width = len(scan.groups)
        marks = ", ".join("?" * len(shared))
        positions = ", ".join(str(i + 1) for i in range(width + 1))
        for row in db.execute(
            f"SELECT {', '.join([*scan.groups, 'o.start_ms'])}, MAX(o.id) FROM observations AS o "
            f"WHERE {scan.condition} AND o.start_ms IN ({marks}) GROUP BY {positions}",
            [*scan.params, *shared],
        ):
            ids[tuple(row[: width + 1])] = row[width + 1]
    return sorted(
        range(len(found)),
        key=lambda i: (newest[i], ids.get((*keys[i], newest[i]), "")),
        reverse=True,
    )
