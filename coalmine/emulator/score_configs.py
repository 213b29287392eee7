"""Score configs: ``POST|GET /api/public/score-configs``, ``GET|PATCH …/{configId}``.

As Langfuse's ``score-configs-api-service.ts`` does:

- ``name``: 1 to 35 characters of letters, digits, ``_``, space, ``.``, ``()`` and
  ``-``; names are not unique (two creates make two configs).
- ``dataType`` NUMERIC (optional ``minValue`` < ``maxValue``), BOOLEAN (categories
  ``True=1`` and ``False=0`` are set, and may not be given), CATEGORICAL (at least one
  category, labels and values unique) or TEXT (no range, no categories).
- No delete: ``PATCH {"isArchived": true}`` archives. A PATCH is checked as a whole
  against the data type.
- The list is newest first, page-numbered (``limit`` default 50).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from coalmine.emulator.auth import require_project
from coalmine.emulator.errors import bad_request, not_found
from coalmine.emulator.paging import page_of, raw_segments
from coalmine.emulator.settings import EmulatorSettings
from coalmine.emulator.store import Store
from coalmine.emulator.wire import format_ms, now_ms

router = APIRouter(dependencies=[Depends(require_project)])

NAME_PATTERN = r"^[a-zA-Z0-9_\s.()\-]+$"
NAME_MAX = 35
BOOLEAN_CATEGORIES = [{"value": 1, "label": "True"}, {"value": 0, "label": "False"}]

ConfigName = Annotated[str, Field(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)]


class Category(BaseModel):
    """``ConfigCategory``."""

    model_config = ConfigDict(extra="forbid")

    value: float
    label: Annotated[str, Field(min_length=1)]


class CreateScoreConfig(BaseModel):
    """``CreateScoreConfigRequest``."""

    model_config = ConfigDict(extra="forbid")

    name: ConfigName
    dataType: Literal["NUMERIC", "BOOLEAN", "CATEGORICAL", "TEXT"]  # noqa: N815
    categories: list[Category] | None = None
    minValue: float | None = None  # noqa: N815
    maxValue: float | None = None  # noqa: N815
    description: str | None = None


class UpdateScoreConfig(BaseModel):
    """``UpdateScoreConfigRequest``."""

    model_config = ConfigDict(extra="forbid")

    isArchived: bool | None = None  # noqa: N815
    name: ConfigName | None = None
    categories: list[Category] | None = None
    minValue: float | None = None  # noqa: N815
    maxValue: float | None = None  # noqa: N815
    description: str | None = None


def _number(value: float | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def config_json(row: sqlite3.Row, project_id: str) -> dict[str, Any]:
    """A stored config as ``ScoreConfig``."""
    entry: dict[str, Any] = {
        "id": row["id"],
        "name": row["name"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
        "projectId": project_id,
        "dataType": row["data_type"],
        "isArchived": bool(row["is_archived"]),
        "description": row["description"],
    }
    if row["min_value"] is not None:
        entry["minValue"] = _number(row["min_value"])
    if row["max_value"] is not None:
        entry["maxValue"] = _number(row["max_value"])
    if row["categories"] is not None:
        entry["categories"] = json.loads(row["categories"])
    return entry


def checked_shape(
    data_type: str,
    categories: list[dict[str, Any]] | None,
    min_value: float | None,
    max_value: float | None,
) -> list[dict[str, Any]] | None:
    """The categories to store for a config of ``data_type``, or a 400."""
    if data_type != "NUMERIC" and (min_value is not None or max_value is not None):
        raise bad_request("minValue and maxValue are only allowed for NUMERIC score configs")
    if min_value is not None and max_value is not None and min_value >= max_value:
        raise bad_request("Maximum value must be greater than Minimum value")
    if data_type == "BOOLEAN":
        if categories is not None:
            raise bad_request("Custom categories are not allowed for boolean score configs")
        return BOOLEAN_CATEGORIES
    if data_type == "CATEGORICAL":
        if not categories:
            raise bad_request("Categorical score configs must have at least one category")
        labels = [c["label"] for c in categories]
        values = [c["value"] for c in categories]
        if len(set(labels)) != len(labels) or len(set(values)) != len(values):
            raise bad_request("Category names and values must be unique")
        return [{"value": _number(c["value"]), "label": c["label"]} for c in categories]
    if categories is not None:
        raise bad_request(f"Categories are not allowed for {data_type} score configs")
    return None


def config_by_id(store: Store, config_id: str) -> sqlite3.Row | None:
    rows = store.query("SELECT * FROM score_configs WHERE id = ?", [config_id])
    return rows[0] if rows else None


def _context(request: Request) -> tuple[Store, EmulatorSettings]:
    return request.app.state.store, request.app.state.settings


@router.post("/api/public/score-configs")
def create_score_config(body: CreateScoreConfig, request: Request) -> dict[str, Any]:
    """A new config (names may repeat)."""
    store, settings = _context(request)
    given = [c.model_dump() for c in body.categories] if body.categories is not None else None
    categories = checked_shape(body.dataType, given, body.minValue, body.maxValue)
    received = now_ms()
    stamp = format_ms(received)
    config_id = str(uuid.uuid4())
    with store.transaction() as db:
        db.execute(
            "INSERT INTO score_configs (id, name, data_type, is_archived, min_value, max_value, "
            "categories, description, created_at, created_ms, updated_at) "
            "VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)",
            [
                config_id,
                body.name.strip(),
                body.dataType,
                body.minValue,
                body.maxValue,
                None if categories is None else json.dumps(categories),
                body.description,
                stamp,
                received,
                stamp,
            ],
        )
    row = config_by_id(store, config_id)
    assert row is not None
    return config_json(row, settings.project_id)


@router.get("/api/public/score-configs")
def list_score_configs(request: Request) -> dict[str, Any]:
    """Configs, archived ones included, newest first."""
    store, settings = _context(request)
    page = page_of(request.query_params)
    total = int(store.query("SELECT COUNT(*) FROM score_configs")[0][0])
    rows = store.query(
        "SELECT * FROM score_configs ORDER BY created_ms DESC, id LIMIT ? OFFSET ?",
        [page.limit, page.offset],
    )
    return {
        "data": [config_json(row, settings.project_id) for row in rows],
        "meta": page.meta(total),
    }


def _existing(store: Store, request: Request) -> sqlite3.Row:
    row = config_by_id(store, raw_segments(request)[-1])
    if row is None:
        raise not_found("Score config not found")
    return row


@router.get("/api/public/score-configs/{configId}")
def get_score_config(request: Request) -> dict[str, Any]:
    store, settings = _context(request)
    return config_json(_existing(store, request), settings.project_id)


@router.patch("/api/public/score-configs/{configId}")
def update_score_config(body: UpdateScoreConfig, request: Request) -> dict[str, Any]:
    """Change the given fields; the result must still fit the data type."""
    store, settings = _context(request)
    row = _existing(store, request)
    given = body.model_fields_set
    min_value = body.minValue if "minValue" in given else row["min_value"]
    max_value = body.maxValue if "maxValue" in given else row["max_value"]
    if "categories" in given:
        categories = None if body.categories is None else [c.model_dump() for c in body.categories]
    elif row["data_type"] == "BOOLEAN":
        categories = None
    else:
        categories = json.loads(row["categories"]) if row["categories"] else None
    categories = checked_shape(row["data_type"], categories, min_value, max_value)
    stamp = format_ms(now_ms())
    with store.transaction() as db:
        db.execute(
            "UPDATE score_configs SET name = ?, is_archived = ?, min_value = ?, max_value = ?, "
            "categories = ?, description = ?, updated_at = ? WHERE id = ?",
            [
                body.name.strip() if body.name is not None else row["name"],
                int(body.isArchived) if body.isArchived is not None else row["is_archived"],
                min_value,
                max_value,
                None if categories is None else json.dumps(categories),
                body.description if "description" in given else row["description"],
                stamp,
                row["id"],
            ],
        )
    updated = config_by_id(store, row["id"])
    assert updated is not None
    return config_json(updated, settings.project_id)


def fits(config: sqlite3.Row, data_type: str, value: float | None, label: str | None) -> bool:
    """Whether a score fits its config: same data type, in range, a known category."""
    if config["data_type"] != data_type:
        return False
    if data_type == "NUMERIC" and value is not None:
        low, high = config["min_value"], config["max_value"]
        return (low is None or value >= low) and (high is None or value <= high)
    if data_type == "CATEGORICAL":
        return label in [c["label"] for c in json.loads(config["categories"] or "[]")]
    return True


def category_value(config: sqlite3.Row, label: str) -> float | None:
    """The number a categorical config gives a label."""
    for category in json.loads(config["categories"] or "[]"):
        if category["label"] == label:
            return float(category["value"])
    return None
