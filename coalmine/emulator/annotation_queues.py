"""Annotation queues, their items and assignments: ``/api/public/annotation-queues``.

As Langfuse's ``publicAnnotationQueueService.ts`` does:

- A queue needs a ``name``, unique in the project (400 ``A queue with this name already
  exists``), and at least one ``scoreConfigIds``, each an existing config. On the Hobby
  plan (``--plan hobby``) a project has one queue: the next create is 405 ``Maximum
  number of annotation queues reached on Hobby plan``. Queues have no update or delete.
- Items point at a TRACE, OBSERVATION or SESSION by id; the object is not checked and
  the same object can be added twice. ``status`` defaults to PENDING. Setting COMPLETED
  (on add or PATCH) stamps ``completedAt`` with the time; going back to PENDING keeps
  it. Items are listed newest first (``limit`` 1..100, default 50, ``status`` filter).
- An assignment names a ``userId`` that must be a project member (404 otherwise);
  assigning twice is one assignment, removing is idempotent. Members are registered
  through the emulator's admin routes (``reviews.py``).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from coalmine.emulator.auth import require_project
from coalmine.emulator.errors import ApiError, bad_request, not_found
from coalmine.emulator.paging import page_of, raw_segments
from coalmine.emulator.settings import EmulatorSettings, Plan
from coalmine.emulator.store import Store
from coalmine.emulator.wire import format_ms, now_ms

router = APIRouter(dependencies=[Depends(require_project)])

HOBBY_QUEUE_LIMIT = 1
ITEMS_MAX_LIMIT = 100
Status = Literal["PENDING", "COMPLETED"]


class CreateQueue(BaseModel):
    """``CreateAnnotationQueueRequest``."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    scoreConfigIds: Annotated[list[str], Field(min_length=1)]  # noqa: N815


class CreateQueueItem(BaseModel):
    """``CreateAnnotationQueueItemRequest``."""

    model_config = ConfigDict(extra="forbid")

    objectId: Annotated[str, Field(min_length=1)]  # noqa: N815
    objectType: Literal["TRACE", "OBSERVATION", "SESSION"]  # noqa: N815
    status: Status | None = None


class UpdateQueueItem(BaseModel):
    """``UpdateAnnotationQueueItemRequest``."""

    model_config = ConfigDict(extra="forbid")

    status: Status | None = None


class Assignment(BaseModel):
    """``AnnotationQueueAssignmentRequest``."""

    model_config = ConfigDict(extra="forbid")

    userId: Annotated[str, Field(min_length=1)]  # noqa: N815


def queue_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "scoreConfigIds": json.loads(row["score_config_ids"]),
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


def item_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "queueId": row["queue_id"],
        "objectId": row["object_id"],
        "objectType": row["object_type"],
        "status": row["status"],
        "completedAt": row["completed_at"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


def _context(request: Request) -> tuple[Store, EmulatorSettings]:
    return request.app.state.store, request.app.state.settings


def queue_by_id(store: Store, queue_id: str) -> sqlite3.Row:
    """The queue, or 404."""
    rows = store.query("SELECT * FROM annotation_queues WHERE id = ?", [queue_id])
    if not rows:
        raise not_found("Annotation queue not found")
    return rows[0]


def item_by_id(store: Store, queue_id: str, item_id: str) -> sqlite3.Row:
    """The queue's item, or 404."""
    rows = store.query(
        "SELECT * FROM annotation_queue_items WHERE id = ? AND queue_id = ?", [item_id, queue_id]
    )
    if not rows:
        raise not_found("Annotation queue item not found")
    return rows[0]


# --- queues --------------------------------------------------------------------------


@router.post("/api/public/annotation-queues")
def create_queue(body: CreateQueue, request: Request) -> dict[str, Any]:
    """A new queue of existing score configs."""
    store, settings = _context(request)
    received = now_ms()
    stamp = format_ms(received)
    queue_id = str(uuid.uuid4())
    with store.transaction() as db:
        count = int(db.execute("SELECT COUNT(*) FROM annotation_queues").fetchone()[0])
        if settings.plan is Plan.HOBBY and count >= HOBBY_QUEUE_LIMIT:
            raise ApiError(
                405,
                "Maximum number of annotation queues reached on Hobby plan",
                error="MethodNotAllowedError",
            )
        if db.execute("SELECT 1 FROM annotation_queues WHERE name = ?", [body.name]).fetchone():
            raise bad_request("A queue with this name already exists")
        ids = list(dict.fromkeys(body.scoreConfigIds))
        known = db.execute(
            f"SELECT COUNT(*) FROM score_configs WHERE id IN ({', '.join('?' * len(ids))})", ids
        ).fetchone()[0]
        if known != len(ids):
            raise bad_request("At least one of the score config ids is invalid")
        db.execute(
            "INSERT INTO annotation_queues (id, name, description, score_config_ids, created_at, "
            "created_ms, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [queue_id, body.name, body.description, json.dumps(ids), stamp, received, stamp],
        )
    return queue_json(queue_by_id(store, queue_id))


@router.get("/api/public/annotation-queues")
def list_queues(request: Request) -> dict[str, Any]:
    """Queues, newest first."""
    store, _ = _context(request)
    page = page_of(request.query_params)
    total = int(store.query("SELECT COUNT(*) FROM annotation_queues")[0][0])
    rows = store.query(
        "SELECT * FROM annotation_queues ORDER BY created_ms DESC, id LIMIT ? OFFSET ?",
        [page.limit, page.offset],
    )
    return {"data": [queue_json(row) for row in rows], "meta": page.meta(total)}


@router.get("/api/public/annotation-queues/{queueId}")
def get_queue(request: Request) -> dict[str, Any]:
    store, _ = _context(request)
    return queue_json(queue_by_id(store, raw_segments(request)[-1]))


# --- items ---------------------------------------------------------------------------


@router.post("/api/public/annotation-queues/{queueId}/items")
def add_item(body: CreateQueueItem, request: Request) -> dict[str, Any]:
    """Add an object to a queue (not checked, not de-duplicated)."""
    store, _ = _context(request)
    queue = queue_by_id(store, raw_segments(request)[-2])
    received = now_ms()
    stamp = format_ms(received)
    status = body.status or "PENDING"
    item_id = str(uuid.uuid4())
    with store.transaction() as db:
        db.execute(
            "INSERT INTO annotation_queue_items (id, queue_id, object_id, object_type, status, "
            "completed_at, created_at, created_ms, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                item_id,
                queue["id"],
                body.objectId,
                body.objectType,
                status,
                stamp if status == "COMPLETED" else None,
                stamp,
                received,
                stamp,
            ],
        )
    return item_json(item_by_id(store, queue["id"], item_id))


@router.get("/api/public/annotation-queues/{queueId}/items")
def list_items(request: Request) -> dict[str, Any]:
    """A queue's items, newest first, optionally of one status."""
    store, _ = _context(request)
    queue = queue_by_id(store, raw_segments(request)[-2])
    params = request.query_params
    page = page_of(params, max_limit=ITEMS_MAX_LIMIT)
    status = params.get("status")
    if status is not None and status not in ("PENDING", "COMPLETED"):
        raise bad_request(f"Invalid status: {status}. Allowed: PENDING, COMPLETED")
    where, args = "queue_id = ?", [queue["id"]]
    if status:
        where += " AND status = ?"
        args.append(status)
    total = int(
        store.query(f"SELECT COUNT(*) FROM annotation_queue_items WHERE {where}", args)[0][0]
    )
    rows = store.query(
        f"SELECT * FROM annotation_queue_items WHERE {where} "
        "ORDER BY created_ms DESC, seq DESC LIMIT ? OFFSET ?",
        [*args, page.limit, page.offset],
    )
    return {"data": [item_json(row) for row in rows], "meta": page.meta(total)}


@router.get("/api/public/annotation-queues/{queueId}/items/{itemId}")
def get_item(request: Request) -> dict[str, Any]:
    store, _ = _context(request)
    segments = raw_segments(request)
    return item_json(item_by_id(store, segments[-3], segments[-1]))


def set_status(
    store: Store, queue_id: str, item_id: str, status: str, annotator: str | None = None
) -> sqlite3.Row:
    """Set an item's status; COMPLETED stamps ``completedAt`` (and who, if known)."""
    item_by_id(store, queue_id, item_id)
    stamp = format_ms(now_ms())
    with store.transaction() as db:
        if status == "COMPLETED":
            db.execute(
                "UPDATE annotation_queue_items SET status = ?, completed_at = ?, "
                "annotator_user_id = COALESCE(?, annotator_user_id), updated_at = ? WHERE id = ?",
                [status, stamp, annotator, stamp, item_id],
            )
        else:
            db.execute(
                "UPDATE annotation_queue_items SET status = ?, updated_at = ? WHERE id = ?",
                [status, stamp, item_id],
            )
    return item_by_id(store, queue_id, item_id)


@router.patch("/api/public/annotation-queues/{queueId}/items/{itemId}")
def update_item(body: UpdateQueueItem, request: Request) -> dict[str, Any]:
    store, _ = _context(request)
    segments = raw_segments(request)
    queue = queue_by_id(store, segments[-3])
    item = item_by_id(store, queue["id"], segments[-1])
    if body.status is None:
        return item_json(item)
    return item_json(set_status(store, queue["id"], item["id"], body.status))


@router.delete("/api/public/annotation-queues/{queueId}/items/{itemId}")
def remove_item(request: Request) -> dict[str, Any]:
    store, _ = _context(request)
    segments = raw_segments(request)
    item = item_by_id(store, segments[-3], segments[-1])
    with store.transaction() as db:
        db.execute("DELETE FROM annotation_queue_items WHERE id = ?", [item["id"]])
    return {"success": True, "message": "Item removed from queue"}


# --- assignments ---------------------------------------------------------------------


def member(store: Store, user_id: str) -> sqlite3.Row | None:
    rows = store.query("SELECT * FROM project_members WHERE user_id = ?", [user_id])
    return rows[0] if rows else None


@router.post("/api/public/annotation-queues/{queueId}/assignments")
def assign(body: Assignment, request: Request) -> dict[str, Any]:
    """Assign a project member to a queue (marks it in the UI; grants nothing)."""
    store, settings = _context(request)
    queue = queue_by_id(store, raw_segments(request)[-2])
    if member(store, body.userId) is None:
        raise not_found("User not found or not a member of this project")
    with store.transaction() as db:
        db.execute(
            "INSERT OR IGNORE INTO annotation_queue_assignments (queue_id, user_id) VALUES (?, ?)",
            [queue["id"], body.userId],
        )
    return {"userId": body.userId, "queueId": queue["id"], "projectId": settings.project_id}


@router.delete("/api/public/annotation-queues/{queueId}/assignments")
def unassign(body: Assignment, request: Request) -> dict[str, Any]:
    store, _ = _context(request)
    queue = queue_by_id(store, raw_segments(request)[-2])
    with store.transaction() as db:
        db.execute(
            "DELETE FROM annotation_queue_assignments WHERE queue_id = ? AND user_id = ?",
            [queue["id"], body.userId],
        )
    return {"success": True}
