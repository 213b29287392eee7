"""``POST /api/public/otel/v1/traces``: OTLP/HTTP trace ingestion.

Accepts what Langfuse accepts (protobuf or OTLP/JSON, gzip or not), answers as it
answers (200 ``{}``; 400 with the server's messages), and writes each span at once as
one observation (Langfuse v4's direct write path; there is no ingestion delay here).
"""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from coalmine.emulator import otlp
from coalmine.emulator.auth import require_project
from coalmine.emulator.errors import ApiError, OtlpError
from coalmine.emulator.store import Store

router = APIRouter()

MAX_INGESTION_VERSION = 4
_LEADING_INTEGER = re.compile(r"\s*([+-]?\d+)")
_SQL_VARIABLES = 500  # ids per IN (...) list

_INSERT_OBSERVATION = (
    f"INSERT INTO observations (seq, {', '.join(otlp.STORED_COLUMNS)}, "
    f"{', '.join(otlp.JSON_COLUMNS)}, created_at, updated_at) VALUES "
    f"({', '.join('?' * (1 + len(otlp.STORED_COLUMNS) + len(otlp.JSON_COLUMNS) + 2))})"
)


def _header(request: Request, name: str) -> str | None:
    """A Langfuse header, sent with hyphens or with underscores."""
    value = request.headers.get(name)
    if value is None:
        value = request.headers.get(name.replace("-", "_"))
    return value


def _error(message: str) -> ApiError:
    # The route answers {"error": <text>}; "message" is added for clients that read it.
    return ApiError(400, message, error=message)


@router.post("/api/public/otel/v1/traces", dependencies=[Depends(require_project)])
async def export_traces(request: Request) -> JSONResponse:
    """Store the spans of one OTLP export; answer ``{}`` (``OtelTraceResponse``)."""
    body = await request.body()
    try:
        spans = await run_in_threadpool(
            otlp.decode_export,
            body,
            content_type=request.headers.get("content-type"),
            content_encoding=request.headers.get("content-encoding"),
        )
    except OtlpError as error:
        raise _error(error.message) from None
    if not spans:
        return JSONResponse({})
    version = _header(request, "x-langfuse-ingestion-version")
    if version:
        leading = _LEADING_INTEGER.match(version)  # JavaScript's parseInt
        if leading is None or int(leading.group(1)) > MAX_INGESTION_VERSION:
            raise _error(
                f'Unsupported x-langfuse-ingestion-version: "{version}". '
                f'Maximum supported: "{MAX_INGESTION_VERSION}".'
            )
    json_metadata = otlp.sdk_writes_json_metadata(
        _header(request, "x-langfuse-sdk-name"), _header(request, "x-langfuse-sdk-version")
    )
    await run_in_threadpool(ingest, request.app.state.store, spans, json_metadata=json_metadata)
    return JSONResponse({})


def ingest(store: Store, spans: list[otlp.RawSpan], *, json_metadata: bool = False) -> int:
    """Map and store spans in one transaction; a span id already stored is replaced.

    Returns the number of observations written.
    """
    now_ms = int(time.time() * 1000)
    now = otlp.iso_ms(now_ms)
    latest: dict[str, otlp.ObservationRow] = {}
    for span in spans:  # the last copy of a span in one export wins
        row = otlp.map_span(span, now_ms=now_ms, json_metadata=json_metadata)
        latest[row.id] = row
    rows = list(latest.values())
    with store.transaction() as db:
        _link_prompts(db, rows)
        ids = [row.id for row in rows]
        for chunk in range(0, len(ids), _SQL_VARIABLES):
            part = ids[chunk : chunk + _SQL_VARIABLES]
            db.execute(f"DELETE FROM observations WHERE id IN ({', '.join('?' * len(part))})", part)
        found = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'observations'")
        last = found.fetchone()
        seq = int(last[0]) if last else 0
        params: list[tuple[Any, ...]] = []
        tag_params: list[tuple[int, str, int, str]] = []
        for row in rows:
            seq += 1
            params.append((seq, *otlp.row_params(row), now, now))
            tag_params.extend((seq, tag, row.start_ms, row.id) for tag in dict.fromkeys(row.tags))
        db.executemany(_INSERT_OBSERVATION, params)
        if tag_params:
            db.executemany(
                "INSERT INTO observation_tags (seq, tag, start_ms, id) VALUES (?, ?, ?, ?)",
                tag_params,
            )
    return len(rows)


def _link_prompts(db: Any, rows: list[otlp.ObservationRow]) -> None:
    """Set ``prompt_id`` from the prompts table, as Langfuse links a generation to the
    prompt version it names (unknown prompts stay unlinked)."""
    wanted = {(row.prompt_name, row.prompt_version) for row in rows if row.prompt_name}
    if not wanted:
        return
    found: dict[tuple[str | None, int | None], str] = {}
    for name, version in wanted:
        hit = db.execute(
            "SELECT id FROM prompts WHERE name = ? AND version = ?", (name, version)
        ).fetchone()
        if hit is not None:
            found[(name, version)] = str(hit[0])
    for row in rows:
        if row.prompt_name:
            row.prompt_id = found.get((row.prompt_name, row.prompt_version))
