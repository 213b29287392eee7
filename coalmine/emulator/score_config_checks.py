"""Scores that name a ``configId``, checked against the config after they are accepted.

Langfuse accepts a score (``{id}``, 202 or 207) and validates it against its config
later, in the ingestion worker; a score that does not fit is dropped without a word
(``IngestionService.processScoreEventList``). This module wraps ``POST
/api/public/scores`` to do the same once ``scores.py`` has stored the batch:

- dropped: the config is archived, the score's name or data type is not the
  config's, a NUMERIC value is outside ``minValue``..``maxValue``, a CATEGORICAL label
  is not one of the categories;
- kept: a CATEGORICAL score also gets the category's number as its ``value``.

Difference: Langfuse also drops a score whose ``configId`` names no config; the
emulator keeps it with the id as given, as it did before it knew score configs, so
clients that never create configs see their scores.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from coalmine.emulator import scores
from coalmine.emulator.auth import require_scores_access
from coalmine.emulator.score_configs import category_value, config_by_id, fits
from coalmine.emulator.store import Store
from coalmine.emulator.wire import parse_json

router = APIRouter()


def _with_ids(payload: Any) -> tuple[Any, list[str]]:
    """The payload with an id on every config-linked score, and those ids."""
    bodies = payload if isinstance(payload, list) else [payload]
    linked: list[str] = []
    for body in bodies:
        if isinstance(body, dict) and isinstance(body.get("configId"), str):
            if not isinstance(body.get("id"), str) or not body["id"]:
                body["id"] = str(uuid.uuid4())
            linked.append(body["id"])
    return payload, linked


def apply_configs(store: Store, score_ids: list[str]) -> list[str]:
    """Drop the stored scores that do not fit their config; fill in category values.
    Returns the ids dropped."""
    dropped: list[str] = []
    with store.transaction() as db:
        for score_id in score_ids:
            score = db.execute("SELECT * FROM scores WHERE id = ?", [score_id]).fetchone()
            if score is None or score["config_id"] is None:
                continue
            config = config_by_id(store, score["config_id"])
            if config is None:
                continue
            if (
                config["is_archived"]
                or config["name"] != score["name"]
                or not fits(config, score["data_type"], score["value"], score["string_value"])
            ):
                db.execute("DELETE FROM scores WHERE id = ?", [score_id])
                dropped.append(score_id)
            elif score["data_type"] == "CATEGORICAL":
                number = category_value(config, score["string_value"])
                db.execute("UPDATE scores SET value = ? WHERE id = ?", [number, score_id])
    return dropped


@router.post("/api/public/scores", dependencies=[Depends(require_scores_access)])
async def create_scores(request: Request) -> Response:
    """``scores.create_scores``, then the config checks of the worker."""
    raw = await request.body()
    try:
        payload = parse_json(raw)
    except (ValueError, UnicodeDecodeError):
        return await scores.create_scores(request)
    payload, linked = _with_ids(payload)
    store: Store = request.app.state.store
    response = await run_in_threadpool(scores._create, store, payload)
    if linked and response.status_code < 300:
        await run_in_threadpool(apply_configs, store, linked)
    return response
