"""What reviewers do in Langfuse's UI, as admin routes of the emulator (``/emulator``,
outside the public API, same Basic auth), so tests and demos can play a reviewer:

- ``POST /emulator/members`` ``{userId, role, name?, email?}`` registers a project
  member (role OWNER, ADMIN, MEMBER or VIEWER); ``GET /emulator/members`` lists them.
- ``POST /emulator/annotation-scores`` saves a reviewer's score as the UI's
  ``createAnnotationScore`` does: ``source`` ANNOTATION, ``authorUserId`` the reviewer,
  the config's name and data type, ``queueId`` when given, environment ``default``.
  One ANNOTATION score per object and name or config: a score of the same data type on
  the same trace, observation or session with the same name or ``configId`` is
  overwritten in place (same id, new value, new author), so the last reviewer wins.
- ``POST /emulator/annotation-queues/{queueId}/items/{itemId}/complete`` ``{userId}``
  is "Mark Completed": COMPLETED, ``completedAt`` now, the reviewer as annotator. No
  score is required.

Both reviewer actions need a member whose role may edit (not VIEWER), else 403.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from coalmine.emulator.annotation_queues import item_json, member, queue_by_id, set_status
from coalmine.emulator.auth import require_project
from coalmine.emulator.errors import ApiError, bad_request, not_found
from coalmine.emulator.score_configs import category_value, config_by_id, fits
from coalmine.emulator.scores import score_v3
from coalmine.emulator.settings import EmulatorSettings
from coalmine.emulator.store import Store
from coalmine.emulator.wire import format_ms, now_ms

router = APIRouter(prefix="/emulator", dependencies=[Depends(require_project)])

Role = Literal["OWNER", "ADMIN", "MEMBER", "VIEWER"]
EDITING_ROLES = ("OWNER", "ADMIN", "MEMBER")


class Member(BaseModel):
    """A project member."""

    model_config = ConfigDict(extra="forbid")

    userId: Annotated[str, Field(min_length=1)]  # noqa: N815
    role: Role = "MEMBER"
    name: str | None = None
    email: str | None = None


class AnnotationScore(BaseModel):
    """A score a reviewer saves on a trace, observation or session."""

    model_config = ConfigDict(extra="forbid")

    authorUserId: Annotated[str, Field(min_length=1)]  # noqa: N815
    configId: Annotated[str, Field(min_length=1)]  # noqa: N815
    value: float | str | bool
    traceId: str | None = None  # noqa: N815
    observationId: str | None = None  # noqa: N815
    sessionId: str | None = None  # noqa: N815
    queueId: str | None = None  # noqa: N815
    comment: str | None = None

    @model_validator(mode="after")
    def _one_subject(self) -> AnnotationScore:
        if bool(self.traceId) == bool(self.sessionId) or (self.observationId and not self.traceId):
            raise ValueError("Give a traceId (with an optional observationId) or a sessionId")
        return self


class Completion(BaseModel):
    """Who marks a queue item completed."""

    model_config = ConfigDict(extra="forbid")

    userId: Annotated[str, Field(min_length=1)]  # noqa: N815


def _editor(store: Store, user_id: str) -> sqlite3.Row:
    found = member(store, user_id)
    if found is None:
        raise not_found("User not found or not a member of this project")
    if found["role"] not in EDITING_ROLES:
        raise ApiError(403, f"User {user_id} may not annotate (role {found['role']})")
    return found


def _member_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "userId": row["user_id"],
        "role": row["role"],
        "name": row["name"],
        "email": row["email"],
    }


@router.post("/members", status_code=201)
def add_member(body: Member, request: Request) -> dict[str, Any]:
    store: Store = request.app.state.store
    with store.transaction() as db:
        db.execute(
            "INSERT OR REPLACE INTO project_members (user_id, name, email, role) "
            "VALUES (?, ?, ?, ?)",
            [body.userId, body.name, body.email, body.role],
        )
    found = member(store, body.userId)
    assert found is not None
    return _member_json(found)


@router.get("/members")
def list_members(request: Request) -> dict[str, Any]:
    store: Store = request.app.state.store
    rows = store.query("SELECT * FROM project_members ORDER BY user_id")
    return {"data": [_member_json(row) for row in rows]}


def _typed_value(config: sqlite3.Row, value: float | str | bool) -> tuple[float | None, str | None]:
    """(number, text) of a reviewer's value for the config, or a 400."""
    data_type = config["data_type"]
    number: float | None
    label: str | None
    if data_type == "NUMERIC" and not isinstance(value, str | bool):
        number, label = float(value), None
    elif data_type == "BOOLEAN" and isinstance(value, bool | int | float) and value in (0, 1):
        number, label = float(value), "True" if value else "False"
    elif data_type == "CATEGORICAL" and isinstance(value, str):
        number, label = category_value(config, value), value
    elif data_type == "TEXT" and isinstance(value, str) and value:
        number, label = None, value
    else:
        raise bad_request(f"Value {value!r} does not fit a {data_type} score config")
    if not fits(config, data_type, number, label):
        raise bad_request(f"Value {value!r} is outside the score config {config['name']}")
    return number, label


@router.post("/annotation-scores")
def save_annotation_score(body: AnnotationScore, request: Request) -> JSONResponse:
    """Save a reviewer's score; one per object and name or config, the last one wins."""
    store: Store = request.app.state.store
    settings: EmulatorSettings = request.app.state.settings
    _editor(store, body.authorUserId)
    config = config_by_id(store, body.configId)
    if config is None or config["is_archived"]:
        raise not_found("Score config not found")
    if body.queueId is not None:
        queue_by_id(store, body.queueId)
    number, label = _typed_value(config, body.value)
    received = now_ms()
    stamp = format_ms(received)
    subject = [body.traceId, body.observationId, body.sessionId]
    with store.transaction() as db:
        existing = db.execute(
            "SELECT id FROM scores WHERE source = 'ANNOTATION' AND data_type = ? "
            "AND trace_id IS ? AND observation_id IS ? AND session_id IS ? "
            "AND (name = ? OR config_id = ?) ORDER BY timestamp_ms DESC LIMIT 1",
            [config["data_type"], *subject, config["name"], config["id"]],
        ).fetchone()
        if existing is not None:
            score_id = existing["id"]
            db.execute(
                "UPDATE scores SET name = ?, value = ?, string_value = ?, comment = ?, "
                "config_id = ?, queue_id = COALESCE(?, queue_id), author_user_id = ?, "
                "timestamp = ?, timestamp_ms = ?, updated_at = ? WHERE id = ?",
                [
                    config["name"],
                    number,
                    label,
                    body.comment,
                    config["id"],
                    body.queueId,
                    body.authorUserId,
                    stamp,
                    received,
                    stamp,
                    score_id,
                ],
            )
        else:
            score_id = str(uuid.uuid4())
            db.execute(
                "INSERT INTO scores (id, name, value, string_value, data_type, source, trace_id, "
                "observation_id, session_id, comment, config_id, queue_id, author_user_id, "
                "environment, timestamp, timestamp_ms, created_at, updated_at) VALUES "
                "(?, ?, ?, ?, ?, 'ANNOTATION', ?, ?, ?, ?, ?, ?, ?, 'default', ?, ?, ?, ?)",
                [
                    score_id,
                    config["name"],
                    number,
                    label,
                    config["data_type"],
                    *subject,
                    body.comment,
                    config["id"],
                    body.queueId,
                    body.authorUserId,
                    stamp,
                    received,
                    stamp,
                    stamp,
                ],
            )
    row = store.query("SELECT * FROM scores WHERE id = ?", [score_id])[0]
    fields = ["core", "details", "subject", "annotation"]
    return JSONResponse(score_v3(row, fields, settings.project_id))


@router.post("/annotation-queues/{queueId}/items/{itemId}/complete")
def complete_item(queueId: str, itemId: str, body: Completion, request: Request) -> dict[str, Any]:  # noqa: N803
    """Mark a queue item completed, as a reviewer; no score needed."""
    store: Store = request.app.state.store
    _editor(store, body.userId)
    queue = queue_by_id(store, queueId)
    return item_json(set_status(store, queue["id"], itemId, "COMPLETED", annotator=body.userId))
