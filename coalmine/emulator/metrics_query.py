"""A metrics v2 query checked as Langfuse checks it: first its shape, as the zod
schema ``MetricsQueryObject`` does (all problems at once, as 400 "Invalid request
data"), then its fields against the view, as the query builder does (the first problem,
as a 400 ``InvalidRequestError``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coalmine.emulator.errors import MISSING, bad_request, invalid, issue, js_type
from coalmine.emulator.metrics_model import (
    TIME_DIMENSION,
    VIEWS,
    Dimension,
    Query,
    View,
    filter_dimension,
)
from coalmine.emulator.wire import parse_time_ms

AGGREGATIONS = (
    "sum",
    "avg",
    "count",
    "max",
    "min",
    "p50",
    "p75",
    "p90",
    "p95",
    "p99",
    "histogram",
    "uniq",
)
GRANULARITIES = ("auto", "minute", "hour", "day", "week", "month")
DEFAULT_ROW_LIMIT = 100
MAX_ROW_LIMIT = 1000
DEFAULT_BINS = 10
MAX_BINS = 100

Problems = list[dict[str, Any]]
Path = list[str | int]


def _kind(value: Any) -> str:
    """zod's type name, for values read with ``dict.get``: None means absent."""
    return js_type(MISSING if value is None else value)


def _expect(problems: Problems, path: Path, value: Any, kind: str) -> bool:
    if _kind(value) == kind and not (kind == "number" and not math.isfinite(value)):
        return True
    problems.append(
        issue(
            "invalid_type",
            path,
            f"Invalid input: expected {kind}, received {_kind(value)}",
            expected=kind,
        )
    )
    return False


def _options(problems: Problems, path: Path, value: Any, options: Sequence[str]) -> bool:
    if value in options:
        return True
    problems.append(
        issue(
            "invalid_value",
            path,
            "Invalid option: expected one of " + "|".join(f'"{o}"' for o in options),
            values=list(options),
        )
    )
    return False


# --------------------------------------------------------------------------- filters

ValueCheck = Callable[[Problems, Path, Any, Mapping[str, Any]], None]
"""Checks a filter's ``value`` (the whole filter at hand), appending problems."""


def _typed(kind: str) -> ValueCheck:
    def check(problems: Problems, path: Path, value: Any, _filter: Mapping[str, Any]) -> None:
        _expect(problems, path, value, kind)

    return check


def _date(problems: Problems, path: Path, value: Any, _filter: Mapping[str, Any]) -> None:
    if not (isinstance(value, str) and parse_time_ms(value) is not None):
        problems.append(issue("invalid_type", path, "Invalid input: expected date"))


def _empty_text(problems: Problems, path: Path, value: Any, _filter: Mapping[str, Any]) -> None:
    if value != "":
        problems.append(issue("invalid_value", path, 'Invalid input: expected ""'))


def _anything(_problems: Problems, _path: Path, _value: Any, _filter: Mapping[str, Any]) -> None:
    pass


def _texts(empty_refused: Callable[[Any], bool]) -> ValueCheck:
    """An array of strings; ``empty_refused(operator)``: whether it must not be empty."""

    def check(problems: Problems, path: Path, value: Any, raw: Mapping[str, Any]) -> None:
        if not _expect(problems, path, value, "array"):
            return
        for index, item in enumerate(value):
            _expect(problems, [*path, index], item, "string")
        if not value and empty_refused(raw.get("operator")):
            problems.append(issue("custom", path, "Value array must not be empty"))

    return check


@dataclass(frozen=True)
class FilterType:
    """A filter ``type`` of the query schema: its operators and the value it takes."""

    operators: tuple[str, ...]
    check_value: ValueCheck
    keyed: bool = False  # takes a "key" too


_TEXT_OPERATORS = ("=", "contains", "does not contain", "starts with", "ends with")
_NUMBER_OPERATORS = ("=", ">", "<", ">=", "<=")

FILTER_TYPES: dict[str, FilterType] = {
    "datetime": FilterType((">", "<", ">=", "<="), _date),
    "string": FilterType(_TEXT_OPERATORS, _typed("string")),
    "stringOptions": FilterType(("any of", "none of"), _texts(lambda _operator: True)),
    "categoryOptions": FilterType(
        ("any of", "none of"), _texts(lambda _operator: False), keyed=True
    ),
    "arrayOptions": FilterType(
        ("any of", "none of", "all of"), _texts(lambda operator: operator == "any of")
    ),
    "number": FilterType(_NUMBER_OPERATORS, _typed("number")),
    "stringObject": FilterType(_TEXT_OPERATORS, _typed("string"), keyed=True),
    "numberObject": FilterType(_NUMBER_OPERATORS, _typed("number"), keyed=True),
    "boolean": FilterType(("=", "<>"), _typed("boolean")),
    "null": FilterType(("is null", "is not null"), _empty_text),
    "positionInTrace": FilterType(("=",), _anything),
}


def _check_filter(problems: Problems, path: Path, raw: Any) -> None:
    if not _expect(problems, path, raw, "object"):
        return
    kind = raw.get("type")
    filter_type = FILTER_TYPES.get(kind) if isinstance(kind, str) else None
    if filter_type is None:
        problems.append(
            issue(
                "invalid_union",
                [*path, "type"],
                "Invalid input: filter type must be one of " + ", ".join(FILTER_TYPES),
                note="No matching discriminator",
            )
        )
        return
    _expect(problems, [*path, "column"], raw.get("column"), "string")
    _options(problems, [*path, "operator"], raw.get("operator"), filter_type.operators)
    if filter_type.keyed:
        _expect(problems, [*path, "key"], raw.get("key"), "string")
    filter_type.check_value(problems, [*path, "value"], raw.get("value"), raw)


# --------------------------------------------------------------------- the schema


def _objects(problems: Problems, path: Path, raw: Any) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The objects of an array, each with its path, and a problem for each item that is
    not one. Lazily: the caller's problems with one item come before the next item's."""
    if not _expect(problems, path, raw, "array"):
        return
    for index, item in enumerate(raw):
        at: Path = [*path, index]
        if _expect(problems, at, item, "object"):
            yield at, item


def _dimensions(problems: Problems, path: Path, raw: Any) -> list[str]:
    if raw is None:
        return []
    return [
        item["field"]
        for at, item in _objects(problems, path, raw)
        if _expect(problems, [*at, "field"], item.get("field"), "string")
    ]


def _metrics(problems: Problems, path: Path, raw: Any) -> list[tuple[str, str]]:
    metrics = []
    for at, item in _objects(problems, path, raw):
        ok = _expect(problems, [*at, "measure"], item.get("measure"), "string")
        ok &= _options(problems, [*at, "aggregation"], item.get("aggregation"), AGGREGATIONS)
        if ok:
            metrics.append((item["measure"], item["aggregation"]))
    return metrics


def _filters(problems: Problems, path: Path, raw: Any) -> list[dict[str, Any]]:
    if raw is None or not _expect(problems, path, raw, "array"):
        return []
    filters = []
    for index, item in enumerate(raw):
        before = len(problems)
        _check_filter(problems, [*path, index], item)
        if len(problems) == before:
            filters.append(item)
    return filters


def _granularity(problems: Problems, path: Path, raw: Any) -> str | None:
    if raw is None or not _expect(problems, path, raw, "object"):
        return None
    granularity = raw.get("granularity")
    return (
        granularity
        if _options(problems, [*path, "granularity"], granularity, GRANULARITIES)
        else None
    )


def _timestamp(problems: Problems, path: Path, raw: Any) -> int:
    """Epoch ms of a strict ISO time; 0 with a problem for anything else."""
    if not _expect(problems, path, raw, "string"):
        return 0
    parsed = parse_time_ms(raw, strict=True)
    if parsed is None:
        problems.append(issue("invalid_format", path, "Invalid ISO datetime", format="datetime"))
        return 0
    return parsed


def _order_by(problems: Problems, path: Path, raw: Any) -> list[tuple[str, str]] | None:
    if raw is None or not _expect(problems, path, raw, "array"):
        return None
    order_by = []
    for at, item in _objects(problems, path, raw):
        ok = _expect(problems, [*at, "field"], item.get("field"), "string")
        ok &= _options(problems, [*at, "direction"], item.get("direction"), ("asc", "desc"))
        if ok:
            order_by.append((item["field"], item["direction"]))
    return order_by


def _config_number(problems: Problems, path: Path, value: Any, top: int) -> int | None:
    """A whole number from 1 to ``top``, or None with a problem."""
    if not _expect(problems, path, value, "number"):
        return None
    if value != int(value):
        problems.append(issue("invalid_type", path, "Invalid input: expected int, received number"))
    elif value < 1:
        problems.append(issue("too_small", path, "Too small: expected number to be >=1"))
    elif value > top:
        problems.append(issue("too_big", path, f"Too big: expected number to be <={top}"))
    else:
        return int(value)
    return None


def _config(problems: Problems, path: Path, raw: Any) -> dict[str, int]:
    """The settings of ``config`` that were given: ``bins``, ``row_limit``."""
    if raw is None or not _expect(problems, path, raw, "object"):
        return {}
    given = {}
    for key, top in (("bins", MAX_BINS), ("row_limit", MAX_ROW_LIMIT)):
        if raw.get(key) is not None:
            value = _config_number(problems, [*path, key], raw[key], top)
            if value is not None:
                given[key] = value
    return given


def parse_query(raw: Any) -> Query:
    """Check a query object as ``MetricsQueryObject`` (zod) does, then as the query
    builder does. Raises the 400 ``ApiError`` Langfuse answers."""
    problems: Problems = []
    if not _expect(problems, ["query"], raw, "object"):
        raise invalid(problems)
    view_name = raw.get("view")
    _options(problems, ["query", "view"], view_name, tuple(VIEWS))
    dimensions = _dimensions(problems, ["query", "dimensions"], raw.get("dimensions"))
    metrics = _metrics(problems, ["query", "metrics"], raw.get("metrics"))
    filters = _filters(problems, ["query", "filters"], raw.get("filters"))
    granularity = _granularity(problems, ["query", "timeDimension"], raw.get("timeDimension"))
    from_ms = _timestamp(problems, ["query", "fromTimestamp"], raw.get("fromTimestamp"))
    to_ms = _timestamp(problems, ["query", "toTimestamp"], raw.get("toTimestamp"))
    order_by = _order_by(problems, ["query", "orderBy"], raw.get("orderBy"))
    config = _config(problems, ["query", "config"], raw.get("config"))
    if problems:
        raise invalid(problems)
    if from_ms >= to_ms:
        raise invalid([issue("custom", ["query"], "fromTimestamp must be before toTimestamp")])
    query = Query(
        view=VIEWS[view_name],
        dimensions=dimensions,
        metrics=metrics,
        filters=filters,
        granularity=granularity,
        from_ms=from_ms,
        to_ms=to_ms,
        order_by=order_by,
        row_limit=config.get("row_limit", DEFAULT_ROW_LIMIT),
        row_limit_given="row_limit" in config,
        bins=config.get("bins", DEFAULT_BINS),
    )
    _check_high_cardinality(query)
    _check_fields(query)
    return query


def _check_high_cardinality(query: Query) -> None:
    """``validateQuery``: high-cardinality dimensions only in bounded top-N queries."""
    view = query.view
    high = [
        d for d in query.dimensions if d in view.dimensions and view.dimensions[d].high_cardinality
    ]
    if not high:
        return
    names = ", ".join(high)
    if query.granularity is not None:
        raise bad_request(
            f"High cardinality dimension(s) '{names}' cannot be used with timeDimension. "
            "Time series queries with high cardinality dimensions produce unbounded result "
            "sets."
        )
    desc = [f for f, direction in query.order_by or [] if direction == "desc"]
    if not query.row_limit_given or not desc:
        raise bad_request(
            f"High cardinality dimension(s) '{names}' require both 'config.row_limit' and "
            "'orderBy' with direction 'desc' on a measure field."
        )
    measures = [m for m, _ in query.metrics]
    wrong = [f for f in desc if not any(f == m or f.endswith(f"_{m}") for m in measures)]
    if wrong:
        raise bad_request(
            f"High cardinality dimension(s) '{names}' require 'orderBy' with direction "
            f"'desc' on a measure field. '{', '.join(wrong)}' "
            f"{'is' if len(wrong) == 1 else 'are'} not a measure in this query."
        )


def _check_fields(query: Query) -> None:
    """The query builder's checks of dimensions, metrics, filters and orderBy; notes the
    joins (``relations``) they need."""
    view = query.view
    relations = [_dimension_relation(view, name) for name in query.dimensions]
    relations += [_measure_relation(view, *metric) for metric in query.metrics]
    relations += [_filter_relation(view, raw) for raw in query.filters]
    query.relations.update(relation for relation in relations if relation)
    for field_name, _ in query.order_by or []:
        _check_order_field(query, field_name)


def _dimension_relation(view: View, name: str) -> str | None:
    if name not in view.dimensions:
        raise bad_request(f"Invalid dimension {name}. Must be one of {','.join(view.dimensions)}")
    return view.dimensions[name].relation


def _measure_relation(view: View, measure: str, aggregation: str) -> str | None:
    if measure not in view.measures:
        raise bad_request(f"Invalid metric {measure}. Must be one of {','.join(view.measures)}")
    spec = view.measures[measure]
    valid = AGGREGATIONS if spec.type in ("integer", "decimal", "number") else ("count", "uniq")
    if aggregation not in valid:
        raise bad_request(
            f'Aggregation "{aggregation}" is not valid for measure "{measure}" '
            f"(type: {spec.type}). Valid aggregations: {', '.join(valid)}"
        )
    return spec.relation


def _filter_relation(view: View, raw: Mapping[str, Any]) -> str | None:
    column, kind = raw["column"], raw["type"]
    dimension = filter_dimension(view, column)
    if dimension is not None:
        _check_dimension_filter(column, dimension, kind)
        return dimension.relation
    if column == view.time_column:
        if kind != "datetime":
            raise bad_request(f"Invalid filter for field '{column}': use type 'datetime'.")
    elif column == "metadata":
        if kind not in ("stringObject", "numberObject"):
            raise bad_request(
                "Invalid filter for field 'metadata': Metadata filters require type "
                f"'stringObject' with a 'key' property, not '{kind}'. "
                'Example: {"column": "metadata", "type": "stringObject", "key": '
                '"environment", "operator": "=", "value": "production"}'
            )
    else:
        raise bad_request(
            f"Invalid filter column {column}. Must be one of {','.join(view.dimensions)} "
            f"or {view.time_column}"
        )
    return None


def _check_dimension_filter(column: str, dimension: Dimension, kind: str) -> None:
    if dimension.kind == "array" and kind == "string":
        raise bad_request(
            f"Invalid filter for field '{column}': Array fields require type "
            "'arrayOptions', not 'string'. Use operators like 'any of', 'all of', "
            "or 'none of' with an array of values."
        )
    if dimension.kind == "array" and kind not in ("arrayOptions", "null"):
        raise bad_request(
            f"Invalid filter for field '{column}': Array fields require type "
            f"'arrayOptions', not '{kind}'."
        )
    if dimension.kind != "array" and kind == "arrayOptions":
        raise bad_request(
            f"Invalid filter for field '{column}': 'arrayOptions' filters apply to "
            "array fields (tags)."
        )
    if kind in ("datetime", "stringObject", "numberObject", "positionInTrace"):
        raise bad_request(
            f"Invalid filter for field '{column}': type '{kind}' does not apply to it."
        )


def _check_order_field(query: Query, field_name: str) -> None:
    if field_name in query.dimensions or (field_name == TIME_DIMENSION and query.granularity):
        return
    prefix, _, measure = field_name.partition("_")
    if prefix in AGGREGATIONS and prefix != "histogram" and (measure, prefix) in query.metrics:
        return
    raise bad_request(
        f"Invalid orderBy field: {field_name}. Must be one of the dimension or metric fields."
    )
