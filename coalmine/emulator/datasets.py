"""Datasets and dataset items: ``/api/public/v2/datasets`` and ``/api/public/dataset-items``.

As Langfuse's ``publicDatasetService.ts`` does:

- Creating a dataset is an upsert on its name: a second create with the same name
  updates the description, metadata and schemas it gives and keeps the id.
- Creating an item is an upsert on ``id`` (at most 255 characters, unique in the
  project): an id of an item in another dataset is answered 404; fields the update
  leaves out keep their values. ``status`` defaults to ``ACTIVE``.
- Lists are newest first, page-numbered (``page`` from 1, ``limit`` default 50). The
  item list returns ``ACTIVE`` items only; ``GET /dataset-items/{id}`` also returns an
  archived one.
- Every add, update, archive and delete makes a new dataset version; ``version`` (a
  UTC timestamp, with ``datasetName``) reads the items as they were then.

Difference: ``inputSchema`` and ``expectedOutputSchema`` are stored and returned but
items are not validated against them. Media references are not resolved
(``mediaReferences`` is always empty).
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from coalmine.emulator.auth import require_project
from coalmine.emulator.errors import invalid, issue, not_found
from coalmine.emulator.paging import dumps, loads, page_of, raw_segments
from coalmine.emulator.settings import EmulatorSettings
from coalmine.emulator.store import Store
from coalmine.emulator.wire import format_ms, now_ms, parse_time_ms

router = APIRouter(dependencies=[Depends(require_project)])

ITEM_ID_MAX = 255


class CreateDataset(BaseModel):
    """``CreateDatasetRequest``."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    metadata: Any = None
    inputSchema: Any = None  # noqa: N815
    expectedOutputSchema: Any = None  # noqa: N815


class CreateDatasetItem(BaseModel):
    """``CreateDatasetItemRequest``."""

    model_config = ConfigDict(extra="forbid")

    datasetName: Annotated[str, Field(min_length=1)]  # noqa: N815
    input: Any = None
    expectedOutput: Any = None  # noqa: N815
    metadata: Any = None
    sourceTraceId: str | None = None  # noqa: N815
    sourceObservationId: str | None = None  # noqa: N815
    id: Annotated[str, Field(min_length=1, max_length=ITEM_ID_MAX)] | None = None
    status: Literal["ACTIVE", "ARCHIVED"] | None = None


def _context(request: Request) -> tuple[Store, EmulatorSettings]:
    return request.app.state.store, request.app.state.settings


def dataset_json(row: sqlite3.Row, project_id: str) -> dict[str, Any]:
    """A stored dataset as ``Dataset``."""
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "metadata": loads(row["metadata"]),
        "inputSchema": loads(row["input_schema"]),
        "expectedOutputSchema": loads(row["expected_output_schema"]),
        "projectId": project_id,
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


def item_json(row: sqlite3.Row, dataset_name: str) -> dict[str, Any]:
    """A stored item (or item version) as ``DatasetItem``."""
    return {
        "id": row["item_id"] if "item_id" in row.keys() else row["id"],  # noqa: SIM118
        "status": row["status"],
        "input": loads(row["input"]),
        "expectedOutput": loads(row["expected_output"]),
        "metadata": loads(row["metadata"]),
        "sourceTraceId": row["source_trace_id"],
        "sourceObservationId": row["source_observation_id"],
        "datasetId": row["dataset_id"],
        "datasetName": dataset_name,
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
        "mediaReferences": [],
    }


def dataset_by_name(store: Store, name: str) -> sqlite3.Row:
    """The dataset called ``name``, or 404."""
    rows = store.query("SELECT * FROM datasets WHERE name = ?", [name])
    if not rows:
        raise not_found("Dataset not found")
    return rows[0]


def dataset_names(store: Store, ids: list[str]) -> dict[str, str]:
    """Dataset names by id."""
    if not ids:
        return {}
    rows = store.query(
        f"SELECT id, name FROM datasets WHERE id IN ({', '.join('?' * len(ids))})", ids
    )
    return {row["id"]: row["name"] for row in rows}


# --- datasets -------------------------------------------------------------------------


@router.post("/api/public/v2/datasets")
def create_dataset(body: CreateDataset, request: Request) -> dict[str, Any]:
    """Create a dataset, or update the one with this name."""
    store, settings = _context(request)
    received = now_ms()
    stamp = format_ms(received)
    with store.transaction() as db:
        found = db.execute("SELECT id FROM datasets WHERE name = ?", [body.name]).fetchone()
        if found is None:
            dataset_id = str(uuid.uuid4())
            db.execute(
                "INSERT INTO datasets (id, name, description, metadata, input_schema, "
                "expected_output_schema, created_at, created_ms, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    dataset_id,
                    body.name,
                    body.description,
                    dumps(body.metadata),
                    dumps(body.inputSchema),
                    dumps(body.expectedOutputSchema),
                    stamp,
                    received,
                    stamp,
                ],
            )
        else:
            dataset_id = found["id"]
            # null, like an absent field, keeps the stored value (zod's nullish).
            updates = {
                "description": body.description,
                "metadata": dumps(body.metadata),
                "input_schema": dumps(body.inputSchema),
                "expected_output_schema": dumps(body.expectedOutputSchema),
            }
            changed = {column: value for column, value in updates.items() if value is not None}
            assignments = ", ".join(f"{column} = ?" for column in [*changed, "updated_at"])
            db.execute(
                f"UPDATE datasets SET {assignments} WHERE id = ?",
                [*changed.values(), stamp, dataset_id],
            )
    row = store.query("SELECT * FROM datasets WHERE id = ?", [dataset_id])[0]
    return dataset_json(row, settings.project_id)


@router.get("/api/public/v2/datasets")
def list_datasets(request: Request) -> dict[str, Any]:
    """Datasets, newest first."""
    store, settings = _context(request)
    page = page_of(request.query_params)
    total = int(store.query("SELECT COUNT(*) FROM datasets")[0][0])
    rows = store.query(
        "SELECT * FROM datasets ORDER BY created_ms DESC, id LIMIT ? OFFSET ?",
        [page.limit, page.offset],
    )
    return {
        "data": [dataset_json(row, settings.project_id) for row in rows],
        "meta": page.meta(total),
    }


@router.get("/api/public/v2/datasets/{datasetName:path}")
def get_dataset(request: Request) -> dict[str, Any]:
    """One dataset by name (URL-encoded when it has a ``/``)."""
    store, settings = _context(request)
    name = raw_segments(request)[-1]
    return dataset_json(dataset_by_name(store, name), settings.project_id)


# --- items ----------------------------------------------------------------------------

_ITEM_FIELDS = {
    # body field: column
    "input": "input",
    "expectedOutput": "expected_output",
    "metadata": "metadata",
    "sourceTraceId": "source_trace_id",
    "sourceObservationId": "source_observation_id",
    "status": "status",
}
_JSON_FIELDS = {"input", "expectedOutput", "metadata"}


def _record_version(db: sqlite3.Connection, item_id: str, at_ms: int, *, deleted: bool) -> None:
    db.execute(
        "INSERT INTO dataset_item_versions (item_id, dataset_id, valid_from_ms, deleted, status, "
        "input, expected_output, metadata, source_trace_id, source_observation_id, created_at, "
        "created_ms, updated_at) SELECT id, dataset_id, ?, ?, status, input, expected_output, "
        "metadata, source_trace_id, source_observation_id, created_at, created_ms, updated_at "
        "FROM dataset_items WHERE id = ?",
        [at_ms, 1 if deleted else 0, item_id],
    )


@router.post("/api/public/dataset-items")
def create_dataset_item(body: CreateDatasetItem, request: Request) -> dict[str, Any]:
    """Create an item, or update the item with the given id."""
    store, _ = _context(request)
    dataset = dataset_by_name(store, body.datasetName)
    received = now_ms()
    stamp = format_ms(received)
    values = {
        column: (dumps(getattr(body, key)) if key in _JSON_FIELDS else getattr(body, key))
        for key, column in _ITEM_FIELDS.items()
    }
    item_id = body.id or str(uuid.uuid4())
    with store.transaction() as db:
        found = db.execute("SELECT dataset_id FROM dataset_items WHERE id = ?", [item_id])
        existing = found.fetchone()
        if existing is not None and existing["dataset_id"] != dataset["id"]:
            raise not_found(
                f"The dataset item with id {item_id} already exists in a dataset other "
                f"than {body.datasetName}"
            )
        if existing is None:
            values["status"] = values["status"] or "ACTIVE"
            db.execute(
                f"INSERT INTO dataset_items (id, dataset_id, {', '.join(values)}, created_at, "
                f"created_ms, updated_at) VALUES ({', '.join('?' * (len(values) + 5))})",
                [item_id, dataset["id"], *values.values(), stamp, received, stamp],
            )
        else:
            # null, like an absent field, keeps the stored value (zod's nullish).
            changed = {column: value for column, value in values.items() if value is not None}
            assignments = ", ".join(f"{column} = ?" for column in [*changed, "updated_at"])
            db.execute(
                f"UPDATE dataset_items SET {assignments} WHERE id = ?",
                [*changed.values(), stamp, item_id],
            )
        _record_version(db, item_id, received, deleted=False)
    row = store.query("SELECT * FROM dataset_items WHERE id = ?", [item_id])[0]
    return item_json(row, dataset["name"])


def _items_as_of(store: Store, dataset_id: str, version_ms: int) -> list[sqlite3.Row]:
    """The ACTIVE items of a dataset as they were at ``version_ms``, newest first."""
    return store.query(
        "SELECT v.* FROM dataset_item_versions v WHERE v.dataset_id = ? AND v.seq = ("
        "  SELECT MAX(w.seq) FROM dataset_item_versions w"
        "  WHERE w.item_id = v.item_id AND w.valid_from_ms <= ?"
        ") AND v.deleted = 0 AND v.status = 'ACTIVE' ORDER BY v.created_ms DESC, v.item_id",
        [dataset_id, version_ms],
    )


@router.get("/api/public/dataset-items")
def list_dataset_items(request: Request) -> dict[str, Any]:
    """ACTIVE items, newest first; of one dataset, at a version, by source."""
    store, _ = _context(request)
    params = request.query_params
    page = page_of(params)
    name = params.get("datasetName")
    version_text = params.get("version")
    version_ms = None
    if version_text:
        version_ms = parse_time_ms(version_text, strict=True)
        problems = []
        if version_ms is None:
            problems.append(issue("invalid_format", ["version"], "Invalid ISO datetime"))
        if not name:
            problems.append(
                issue("custom", ["version"], "datasetName is required when version is provided")
            )
        if problems:
            raise invalid(problems)
    dataset = dataset_by_name(store, name) if name else None
    if dataset is not None and version_ms is not None:
        rows = _items_as_of(store, dataset["id"], version_ms)
        rows = [
            row
            for row in rows
            if all(
                params.get(key) in (None, row[column])
                for key, column in (
                    ("sourceTraceId", "source_trace_id"),
                    ("sourceObservationId", "source_observation_id"),
                )
            )
        ]
        page_rows = rows[page.offset : page.offset + page.limit]
        names = {dataset["id"]: dataset["name"]}
        total = len(rows)
    else:
        where = ["status = 'ACTIVE'"]
        args: list[Any] = []
        if dataset is not None:
            where.append("dataset_id = ?")
            args.append(dataset["id"])
        for key, column in (
            ("sourceTraceId", "source_trace_id"),
            ("sourceObservationId", "source_observation_id"),
        ):
            if params.get(key):
                where.append(f"{column} = ?")
                args.append(params[key])
        clause = " AND ".join(where)
        total = int(store.query(f"SELECT COUNT(*) FROM dataset_items WHERE {clause}", args)[0][0])
        page_rows = store.query(
            f"SELECT * FROM dataset_items WHERE {clause} ORDER BY created_ms DESC, id "
            "LIMIT ? OFFSET ?",
            [*args, page.limit, page.offset],
        )
        names = dataset_names(store, sorted({row["dataset_id"] for row in page_rows}))
    return {
        "data": [item_json(row, names.get(row["dataset_id"], "")) for row in page_rows],
        "meta": page.meta(total),
    }


def _item(store: Store, item_id: str) -> sqlite3.Row:
    rows = store.query("SELECT * FROM dataset_items WHERE id = ?", [item_id])
    if not rows:
        raise not_found("Dataset item not found")
    return rows[0]


@router.get("/api/public/dataset-items/{itemId:path}")
def get_dataset_item(request: Request) -> dict[str, Any]:
    """One item, archived or not."""
    store, _ = _context(request)
    row = _item(store, raw_segments(request)[-1])
    return item_json(row, dataset_names(store, [row["dataset_id"]])[row["dataset_id"]])


@router.delete("/api/public/dataset-items/{itemId:path}")
def delete_dataset_item(request: Request) -> dict[str, Any]:
    """Delete an item (a new dataset version without it)."""
    store, _ = _context(request)
    item_id = raw_segments(request)[-1]
    _item(store, item_id)
    with store.transaction() as db:
        _record_version(db, item_id, now_ms(), deleted=True)
        db.execute("DELETE FROM dataset_items WHERE id = ?", [item_id])
    return {"message": "Dataset item successfully deleted"}
