"""Experiments as a Langfuse v4 server derives them: from the ``langfuse.experiment.*``
attributes of ingested spans.

The SDK's experiment runner (and any exporter) marks every observation of an item trace
with the experiment's id, name and dataset id, the item id and the item's root
observation id (``experiment-item-task`` for the SDK). No API call creates an
experiment: it exists once such spans are ingested. This module wraps the OTLP route:
the spans are stored as observations by ``otel.py`` as before, then their experiment
attributes are recorded here, one row per span.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from coalmine.emulator import otel, otlp
from coalmine.emulator.auth import require_project
from coalmine.emulator.store import Store

router = APIRouter()

PREFIX = "langfuse.experiment."
ID = PREFIX + "id"
NAME = PREFIX + "name"
DESCRIPTION = PREFIX + "description"
METADATA = PREFIX + "metadata"
DATASET_ID = PREFIX + "dataset.id"
ITEM_ID = PREFIX + "item.id"
ITEM_VERSION = PREFIX + "item.version"
ITEM_EXPECTED_OUTPUT = PREFIX + "item.expected_output"
ITEM_METADATA = PREFIX + "item.metadata"
ITEM_ROOT_OBSERVATION_ID = PREFIX + "item.root_observation_id"

REQUIRED = (ID, NAME, ITEM_ID, ITEM_ROOT_OBSERVATION_ID)
"""Without these a span is not part of an experiment; the dataset id is optional
(experiments on local data have none)."""


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _flattened(attributes: Mapping[str, Any], key: str) -> Any:
    """A JSON attribute sent whole (a JSON string) or flattened (``key.<name>``)."""
    value = attributes.get(key)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {"value": value}
    if value is not None:
        return value
    nested = {
        name.removeprefix(key + "."): item
        for name, item in attributes.items()
        if name.startswith(key + ".")
    }
    return nested or None


def experiment_row(span: otlp.RawSpan, received_ms: int) -> tuple[Any, ...] | None:
    """The row of ``experiment_spans`` for a span, or None if it is in no experiment."""
    attributes = span.attributes
    if any(not attributes.get(key) for key in REQUIRED):
        return None
    metadata = _flattened(attributes, METADATA)
    item_metadata = _flattened(attributes, ITEM_METADATA)
    return (
        span.span_id,
        span.trace_id,
        _text(attributes[ID]),
        _text(attributes[NAME]),
        _text(attributes.get(DESCRIPTION)),
        None if metadata is None else json.dumps(metadata),
        _text(attributes.get(DATASET_ID)),
        _text(attributes[ITEM_ID]),
        _text(attributes[ITEM_ROOT_OBSERVATION_ID]),
        _text(attributes.get(ITEM_VERSION)),
        _text(attributes.get(ITEM_EXPECTED_OUTPUT)),
        None if item_metadata is None else json.dumps(item_metadata),
        received_ms,
    )


def record(store: Store, spans: list[otlp.RawSpan]) -> int:
    """Record the experiment attributes of ``spans``; a span sent again replaces its row.
    Returns the number of experiment spans."""
    received = int(time.time() * 1000)
    rows = [row for row in (experiment_row(span, received) for span in spans) if row]
    if rows:
        with store.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO experiment_spans (span_id, trace_id, experiment_id, "
                "experiment_name, description, metadata, dataset_id, item_id, "
                "root_observation_id, item_version, item_expected_output, item_metadata, "
                "ingested_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
    return len(rows)


@router.post("/api/public/otel/v1/traces", dependencies=[Depends(require_project)])
async def export_traces(request: Request) -> JSONResponse:
    """``otel.export_traces``, then the experiment attributes of the stored spans."""
    response = await otel.export_traces(request)
    body = await request.body()  # cached by the request: the bytes otel.py read
    encoding = (request.headers.get("content-encoding") or "").lower()
    if "gzip" not in encoding and PREFIX.encode() not in body:
        return response  # no experiment attributes: skip decoding it a second time
    spans = await run_in_threadpool(
        otlp.decode_export,
        body,
        content_type=request.headers.get("content-type"),
        content_encoding=request.headers.get("content-encoding"),
    )
    await run_in_threadpool(record, request.app.state.store, spans)
    return response
