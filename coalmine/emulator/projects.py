"""``GET /api/public/projects``: the project of the keys, as the SDK reads it to build
experiment ids and UI links."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from coalmine.emulator.auth import require_project
from coalmine.emulator.settings import EmulatorSettings

router = APIRouter()

ORGANIZATION = {"id": "coalmine-local-org", "name": "coalmine local"}


@router.get("/api/public/projects", dependencies=[Depends(require_project)])
def list_projects(request: Request) -> dict[str, Any]:
    """The one project the emulator holds."""
    settings: EmulatorSettings = request.app.state.settings
    project = {
        "id": settings.project_id,
        "name": settings.project_id,
        "organization": ORGANIZATION,
        "metadata": {},
    }
    return {"data": [project]}
