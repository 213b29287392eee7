"""The deprecated dataset run routes, over the experiments derived from span attributes.

A dataset run is an experiment on a dataset: its id is the experiment id, its name the
experiment (run) name; its run items are the experiment items. The routes
(``GET /datasets/{name}/runs``, ``GET|DELETE /datasets/{name}/runs/{run}``,
``GET /dataset-run-items``) answer with a ``_deprecation`` notice; they are sunset on
Langfuse Cloud on 2026-11-16 in favour of ``/experiments`` and ``/experiment-items``.

``POST /dataset-run-items`` does what a v4 (``events_only``) server does: it checks the
dataset item exists and answers a run item whose ``datasetRunId`` is the stable
experiment id, ``sha256(JSON.stringify(["langfuse-experiment-v1", projectId,
datasetId, runName]))[:16]``, and writes nothing: the experiment exists only through
the spans of its traces.

Difference: Langfuse Cloud (``events_only``) answers the three deprecated reads 404;
the emulator serves them, as a self-hosted v4 server that still has them does.
``DELETE`` forgets the run's experiment attributes; the traces stay.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from coalmine.emulator.auth import require_project
from coalmine.emulator.datasets import dataset_by_name
from coalmine.emulator.errors import invalid, issue, not_found
from coalmine.emulator.experiments import summarise
from coalmine.emulator.paging import Page, page_of, raw_segments
from coalmine.emulator.settings import EmulatorSettings
from coalmine.emulator.store import Store
from coalmine.emulator.wire import format_ms, now_ms, parse_time_ms

router = APIRouter(dependencies=[Depends(require_project)])

SUNSET = "2026-11-16"
UPGRADE_GUIDE = "https://langfuse.com/self-hosting/upgrade/upgrade-guides/upgrade-v3-to-v4"


def deprecation(replacement: str) -> dict[str, str]:
    return {
        "message": "Dataset runs are replaced by experiments in Langfuse v4.",
        "replacement": replacement,
        "docsUrl": UPGRADE_GUIDE,
        "sunsetAt": SUNSET,
    }


def stable_experiment_id(project_id: str, dataset_id: str, run_name: str) -> str:
    """The experiment id Langfuse and the SDK derive for a run on a dataset."""
    payload = json.dumps(
        ["langfuse-experiment-v1", project_id, dataset_id, run_name],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


_RUN_SPANS = (
    "SELECT e.*, o.start_ms, o.end_ms, o.start_time, o.end_time "
    "FROM experiment_spans e JOIN observations o ON o.id = e.span_id WHERE e.dataset_id = ?"
)


def _runs(store: Store, dataset_id: str) -> list[tuple[Any, list[sqlite3.Row]]]:
    """The runs of a dataset with their item rows, newest first."""
    rows = store.query(_RUN_SPANS, [dataset_id])
    runs = sorted(summarise(rows), key=lambda e: (e.start_ms, e.id), reverse=True)
    return [
        (
            run,
            sorted(
                (
                    r
                    for r in rows
                    if r["experiment_id"] == run.id and r["span_id"] == r["root_observation_id"]
                ),
                key=lambda r: (r["start_ms"], r["span_id"]),
                reverse=True,
            ),
        )
        for run in runs
    ]


def _run_json(run: Any, dataset: sqlite3.Row) -> dict[str, Any]:
    metadata = json.loads(run.metadata) if run.metadata else None
    return {
        "id": run.id,
        "name": run.name,
        "description": run.description,
        "metadata": metadata,
        "datasetId": dataset["id"],
        "datasetName": dataset["name"],
        "createdAt": format_ms(run.start_ms),
        "updatedAt": format_ms(run.activity_ms),
    }


def _run_item_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["span_id"],
        "datasetRunId": row["experiment_id"],
        "datasetRunName": row["experiment_name"],
        "datasetItemId": row["item_id"],
        "traceId": row["trace_id"],
        "observationId": row["span_id"],
        "createdAt": row["start_time"],
        "updatedAt": row["end_time"] or row["start_time"],
    }


def _context(request: Request) -> tuple[Store, EmulatorSettings]:
    return request.app.state.store, request.app.state.settings


@router.get("/api/public/datasets/{datasetName:path}/runs")
def list_runs(request: Request) -> dict[str, Any]:
    """The dataset's runs (experiments), newest first."""
    store, _ = _context(request)
    page = page_of(request.query_params)
    dataset = dataset_by_name(store, raw_segments(request)[-2])
    runs = _runs(store, dataset["id"])
    return {
        "data": [
            _run_json(run, dataset) for run, _ in runs[page.offset : page.offset + page.limit]
        ],
        "meta": page.meta(len(runs)),
        "_deprecation": deprecation("GET /api/public/experiments"),
    }


def _run(store: Store, request: Request) -> tuple[sqlite3.Row, Any, list[sqlite3.Row]]:
    segments = raw_segments(request)
    dataset = dataset_by_name(store, segments[-3])
    for run, items in _runs(store, dataset["id"]):
        if run.name == segments[-1]:
            return dataset, run, items
    raise not_found("Dataset run not found")


@router.get("/api/public/datasets/{datasetName:path}/runs/{runName:path}")
def get_run(request: Request) -> dict[str, Any]:
    """One run with its items."""
    store, _ = _context(request)
    dataset, run, items = _run(store, request)
    return {
        **_run_json(run, dataset),
        "datasetRunItems": [_run_item_json(row) for row in items],
        "_deprecation": deprecation("GET /api/public/experiments"),
    }


@router.delete("/api/public/datasets/{datasetName:path}/runs/{runName:path}")
def delete_run(request: Request) -> dict[str, Any]:
    """Forget a run's experiment attributes (its traces stay)."""
    store, _ = _context(request)
    _, run, _ = _run(store, request)
    with store.transaction() as db:
        db.execute("DELETE FROM experiment_spans WHERE experiment_id = ?", [run.id])
    return {"message": "Dataset run successfully deleted"}


@router.get("/api/public/dataset-run-items")
def list_run_items(request: Request) -> dict[str, Any]:
    """The items of one run, given the dataset id and run name."""
    store, _ = _context(request)
    params = request.query_params
    problems = [
        issue("invalid_type", [key], "Invalid input: expected string, received undefined")
        for key in ("datasetId", "runName")
        if not params.get(key)
    ]
    if problems:
        raise invalid(problems)
    page: Page = page_of(params)
    found = store.query("SELECT * FROM datasets WHERE id = ?", [params["datasetId"]])
    if not found:
        raise not_found("Dataset not found")
    items = next(
        (rows for run, rows in _runs(store, found[0]["id"]) if run.name == params["runName"]),
        None,
    )
    if items is None:
        raise not_found("Dataset run not found")
    return {
        "data": [_run_item_json(row) for row in items[page.offset : page.offset + page.limit]],
        "meta": page.meta(len(items)),
        "_deprecation": deprecation("GET /api/public/experiment-items"),
    }


class CreateRunItem(BaseModel):
    """``CreateDatasetRunItemRequest``."""

    model_config = ConfigDict(extra="forbid")

    runName: Annotated[str, Field(min_length=1)]  # noqa: N815
    runDescription: str | None = None  # noqa: N815
    metadata: Any = None
    datasetItemId: Annotated[str, Field(min_length=1)]  # noqa: N815
    observationId: str | None = None  # noqa: N815
    traceId: str | None = None  # noqa: N815
    datasetVersion: str | None = None  # noqa: N815
    createdAt: str | None = None  # noqa: N815

    @model_validator(mode="after")
    def _linked(self) -> CreateRunItem:
        if not self.traceId and not self.observationId:
            raise ValueError("Either traceId or observationId must be provided")
        for key in ("datasetVersion", "createdAt"):
            text = getattr(self, key)
            if text is not None and parse_time_ms(text, strict=True) is None:
                raise ValueError(f"{key} must be an ISO 8601 date-time")
        return self


def _trace_of(store: Store, observation_id: str) -> str:
    found = store.query("SELECT trace_id FROM observations WHERE id = ?", [observation_id])
    if not found:
        raise not_found("Observation not found")
    return str(found[0]["trace_id"])


@router.post("/api/public/dataset-run-items")
def create_run_item(body: CreateRunItem, request: Request) -> dict[str, Any]:
    """Check the item and answer the run item a v4 server would; store nothing."""
    store, settings = _context(request)
    found = store.query("SELECT dataset_id FROM dataset_items WHERE id = ?", [body.datasetItemId])
    if not found:
        raise not_found("Dataset item not found")
    run_id = stable_experiment_id(settings.project_id, found[0]["dataset_id"], body.runName)
    trace_id = body.traceId or _trace_of(store, body.observationId or "")
    created_ms = parse_time_ms(body.createdAt, strict=True) if body.createdAt else None
    stamp = format_ms(created_ms if created_ms is not None else now_ms())
    item_key = json.dumps([run_id, body.datasetItemId, trace_id, body.observationId])
    return {
        "id": hashlib.sha256(item_key.encode()).hexdigest()[:32],
        "datasetRunId": run_id,
        "datasetRunName": body.runName,
        "datasetItemId": body.datasetItemId,
        "traceId": trace_id,
        "observationId": body.observationId,
        "createdAt": stamp,
        "updatedAt": stamp,
    }
